package dev.viewcount.flink;

import java.io.IOException;
import java.io.StringWriter;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;

/**
 * Decodes and validates one event record in a single pass over its bytes: the typed columns, the
 * reject reason (NULL for a valid event) and its payload.
 *
 * <p>Columns come from the table's declaration: {@code reject_reason}, {@code payload}, and one
 * column per schema field (matched by the spec's column name). A record that is not a JSON object
 * with the schema's fields never fails the job: it becomes a row with its reason.
 */
final class EventDecoder implements DeserializationSchema<RowData> {
    private static final long serialVersionUID = 1L;
    static final String REASON = "reject_reason";
    static final String PAYLOAD = "payload";

    private final EventRules rules;
    private final int maxRecordBytes;
    private final TypeInformation<RowData> producedType;
    private final int arity;
    private final int reasonColumn;
    private final int payloadColumn;
    /** Per rule field, its column in the produced row (-1: not declared). */
    private final int[] columnOfField;

    private transient JsonFactory factory;
    private transient CharsetDecoder utf8;
    private transient String[] kinds;
    private transient String[] texts;
    private transient long[] numbers;
    private transient boolean[] tooLarge;

    EventDecoder(EventRules rules, int maxRecordBytes, String[] columns, TypeInformation<RowData> producedType) {
        this.rules = rules;
        this.maxRecordBytes = maxRecordBytes;
        this.producedType = producedType;
        this.arity = columns.length;
        int reason = -1;
        int payload = -1;
        this.columnOfField = new int[rules.fields.length];
        java.util.Arrays.fill(columnOfField, -1);
        for (int c = 0; c < columns.length; c++) {
            if (columns[c].equals(REASON)) {
                reason = c;
            } else if (columns[c].equals(PAYLOAD)) {
                payload = c;
            } else {
                int field = rules.indexOfColumn(columns[c]);
                if (field < 0) {
                    throw new IllegalArgumentException("column " + columns[c] + " is not a field of the event's schema");
                }
                columnOfField[field] = c;
            }
        }
        this.reasonColumn = reason;
        this.payloadColumn = payload;
    }

    @Override
    public void open(InitializationContext context) {
        factory = new JsonFactory();
        utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT);
        int n = rules.fields.length;
        kinds = new String[n];
        texts = new String[n];
        numbers = new long[n];
        tooLarge = new boolean[n];
    }

    @Override
    public RowData deserialize(byte[] message) throws IOException {
        if (factory == null) {
            open(null);
        }
        GenericRowData row = new GenericRowData(arity);
        // The payload rides along as text: a record valid here can still be rejected downstream (an
        // implausible time), and a dead letter keeps what was sent, up to maxRecordBytes (the whole
        // record stays at its topic, partition and offset). Bytes that are not UTF-8 are a reject
        // of their own and are kept with replacement characters, so every reader can parse them.
        String reason = null;
        String text = null;
        if (message != null) {
            int kept = Math.min(message.length, maxRecordBytes);
            try {
                text = utf8.decode(ByteBuffer.wrap(message, 0, kept)).toString();
            } catch (CharacterCodingException notUtf8) {
                text = new String(message, 0, kept, StandardCharsets.UTF_8);
                reason = kept < message.length ? null : "record is not valid UTF-8";
            }
            if (message.length > maxRecordBytes) {
                reason = "record of " + message.length + " bytes is larger than the " + maxRecordBytes
                        + " bytes an event may have (payload kept: its first " + maxRecordBytes + " bytes)";
            }
            if (payloadColumn >= 0) {
                row.setField(payloadColumn, StringData.fromString(text));
            }
        }
        if (reason == null) {
            reason = decode(message);
        }
        if (reason != null) {
            if (reasonColumn >= 0) {
                row.setField(reasonColumn, StringData.fromString(reason));
            }
            return row;
        }
        for (int i = 0; i < rules.fields.length; i++) {
            int column = columnOfField[i];
            if (column < 0 || kinds[i] == null) {
                continue;
            }
            row.setField(column, kinds[i].equals("integer") ? (Object) numbers[i] : StringData.fromString(texts[i]));
        }
        return row;
    }

    /** Fills kinds/texts/numbers from the record; returns why it is rejected, or null. */
    private String decode(byte[] message) {
        EventRules.Field[] fields = rules.fields;
        java.util.Arrays.fill(kinds, null);
        java.util.Arrays.fill(texts, null);
        java.util.Arrays.fill(tooLarge, false);
        if (message == null || message.length == 0) {
            return "empty record";
        }
        try (JsonParser parser = factory.createParser(message)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return "not a JSON object";
            }
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                int slot = rules.indexOf(parser.currentName());
                JsonToken value = parser.nextToken();
                if (slot < 0) {
                    parser.skipChildren();
                    continue;
                }
                switch (value) {
                    case VALUE_STRING:
                        kinds[slot] = "string";
                        texts[slot] = parser.getText();
                        break;
                    case VALUE_NUMBER_INT:
                        kinds[slot] = "integer";
                        if (parser.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
                            tooLarge[slot] = true;
                        } else {
                            numbers[slot] = parser.getLongValue();
                        }
                        break;
                    case VALUE_NULL:
                        kinds[slot] = null;
                        break;
                    case START_ARRAY:
                        kinds[slot] = "array";
                        texts[slot] = arrayText(parser);
                        break;
                    default:
                        kinds[slot] = value == JsonToken.START_OBJECT ? "object" : "other";
                        parser.skipChildren();
                }
            }
            if (token != JsonToken.END_OBJECT || parser.nextToken() != null) {
                return "not a JSON object";
            }
        } catch (Exception malformed) {
            return "not a JSON object";
        }
        for (int i = 0; i < fields.length; i++) {
            EventRules.Field field = fields[i];
            if (kinds[i] == null) {
                if (field.required) {
                    return "missing required field " + field.name + field.missingHint;
                }
                continue;
            }
            if (!kinds[i].equals(field.kind)) {
                return field.name + " must be " + article(field.kind);
            }
            String problem = check(field, i);
            if (problem != null) {
                return problem;
            }
        }
        return null;
    }

    /** The array at the parser, re-written as compact JSON text (nested values included). */
    private String arrayText(JsonParser parser) throws IOException {
        StringWriter out = new StringWriter();
        try (JsonGenerator generator = factory.createGenerator(out)) {
            generator.copyCurrentStructure(parser);
        }
        return out.toString();
    }

    private String check(EventRules.Field field, int i) {
        if (field.kind.equals("integer")) {
            if (tooLarge[i]) {
                return field.name + " does not fit in 64 bits";
            }
            if (field.minimum != null && numbers[i] < field.minimum) {
                return field.name + " is below its minimum " + field.minimum;
            }
            return null;
        }
        String text = texts[i];
        if (field.allowed != null && !field.allowed.contains(text)) {
            return field.name + " is not one of the known values";
        }
        if (field.minLength != null && text.codePointCount(0, text.length()) < field.minLength) {
            return field.name + " is shorter than " + field.minLength;
        }
        if (field.maxLength != null && text.codePointCount(0, text.length()) > field.maxLength) {
            return field.name + " is longer than " + field.maxLength;
        }
        return null;
    }

    private static String article(String kind) {
        return kind.equals("integer") || kind.equals("array") ? "an " + kind : "a " + kind;
    }

    @Override
    public boolean isEndOfStream(RowData nextElement) {
        return false;
    }

    @Override
    public TypeInformation<RowData> getProducedType() {
        return producedType;
    }
}
