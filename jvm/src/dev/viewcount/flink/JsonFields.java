package dev.viewcount.flink;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * Parses and validates one event's JSON in a single pass.
 *
 * <p>{@code json_fields(payload, spec)} takes the event's rules as compiled from its file in
 * schemas/ by the Python side (pipelines/rollup_job.py: field order, kind, required, enum,
 * minimum, lengths) and returns a row: {@code reason} is NULL for a valid event, else why it is
 * rejected; {@code f<i>} is the i-th field's value as text (integers in decimal, arrays as
 * JSON), NULL when absent or JSON null. Doing it here keeps the generated SQL small: a large
 * CASE over many JSON functions cost more than the parse itself.
 */
public class JsonFields extends ScalarFunction {
    public static final int MAX_FIELDS = 16;
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final JsonFactory FACTORY = MAPPER.getFactory();

    private transient String cachedSpecText;
    private transient Field[] cachedSpec;

    /** One field's rules; kind is "string", "integer" or "array". */
    private static final class Field {
        String name;
        String kind;
        boolean required;
        Set<String> allowed;
        Long minimum;
        Integer minLength;
        Integer maxLength;
        String missingHint = "";
    }

    public @DataTypeHint(
            "ROW<reason STRING, f0 STRING, f1 STRING, f2 STRING, f3 STRING, f4 STRING, f5 STRING,"
                    + " f6 STRING, f7 STRING, f8 STRING, f9 STRING, f10 STRING, f11 STRING,"
                    + " f12 STRING, f13 STRING, f14 STRING, f15 STRING>")
    Row eval(String payload, String specText) {
        Field[] spec = spec(specText);
        Object[] row = new Object[MAX_FIELDS + 1];
        row[0] = parse(payload, spec, row);
        return Row.of(row);
    }

    private static String parse(String payload, Field[] spec, Object[] row) {
        if (payload == null) {
            return "empty record";
        }
        String[] kinds = new String[spec.length];
        try (JsonParser parser = FACTORY.createParser(payload)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return "not a JSON object";
            }
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                int slot = indexOf(spec, parser.currentName());
                JsonToken value = parser.nextToken();
                if (slot < 0) {
                    parser.skipChildren();
                    continue;
                }
                switch (value) {
                    case VALUE_STRING:
                        kinds[slot] = "string";
                        row[slot + 1] = parser.getText();
                        break;
                    case VALUE_NUMBER_INT:
                        kinds[slot] = "integer";
                        row[slot + 1] = parser.getText();
                        break;
                    case VALUE_NULL:
                        kinds[slot] = null;
                        row[slot + 1] = null;
                        break;
                    case START_ARRAY:
                        kinds[slot] = "array";
                        row[slot + 1] = MAPPER.readTree(parser).toString();
                        break;
                    default:
                        kinds[slot] = value == JsonToken.START_OBJECT ? "object" : "other";
                        parser.skipChildren();
                        row[slot + 1] = null;
                }
            }
            if (token != JsonToken.END_OBJECT || parser.nextToken() != null) {
                return "not a JSON object";
            }
        } catch (Exception malformed) {
            return "not a JSON object";
        }
        for (int i = 0; i < spec.length; i++) {
            Field field = spec[i];
            String text = (String) row[i + 1];
            if (kinds[i] == null) {
                if (field.required) {
                    return "missing required field " + field.name + field.missingHint;
                }
                continue;
            }
            if (!kinds[i].equals(field.kind)) {
                return field.name + " must be " + article(field.kind);
            }
            String problem = check(field, text);
            if (problem != null) {
                return problem;
            }
        }
        return null;
    }

    private static String check(Field field, String text) {
        if (field.allowed != null && !field.allowed.contains(text)) {
            return field.name + " is not one of the known values";
        }
        if (field.minimum != null) {
            try {
                if (Long.parseLong(text) < field.minimum) {
                    return field.name + " is below its minimum " + field.minimum;
                }
            } catch (NumberFormatException tooLarge) {
                return field.name + " does not fit in 64 bits";
            }
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

    private static int indexOf(Field[] spec, String name) {
        for (int i = 0; i < spec.length; i++) {
            if (spec[i].name.equals(name)) {
                return i;
            }
        }
        return -1;
    }

    private Field[] spec(String specText) {
        if (!specText.equals(cachedSpecText)) {
            cachedSpec = compile(specText);
            cachedSpecText = specText;
        }
        return cachedSpec;
    }

    /** The spec is a JSON array of {name, kind, required, enum, minimum, minLength, maxLength}. */
    private static Field[] compile(String specText) {
        try {
            JsonNode root = MAPPER.readTree(specText);
            List<Field> fields = new ArrayList<>();
            for (JsonNode node : root) {
                Field field = new Field();
                field.name = node.get("name").asText();
                field.kind = node.get("kind").asText();
                field.required = node.path("required").asBoolean(false);
                if (node.hasNonNull("enum")) {
                    field.allowed = new HashSet<>();
                    for (Iterator<JsonNode> it = node.get("enum").elements(); it.hasNext(); ) {
                        field.allowed.add(it.next().asText());
                    }
                }
                if (node.hasNonNull("minimum")) {
                    field.minimum = node.get("minimum").asLong();
                }
                if (node.hasNonNull("minLength")) {
                    field.minLength = node.get("minLength").asInt();
                }
                if (node.hasNonNull("maxLength")) {
                    field.maxLength = node.get("maxLength").asInt();
                }
                if (node.hasNonNull("missingHint")) {
                    field.missingHint = node.get("missingHint").asText();
                }
                fields.add(field);
            }
            if (fields.size() > MAX_FIELDS) {
                throw new IllegalArgumentException(
                        "json_fields reads at most " + MAX_FIELDS + " fields, got " + fields.size());
            }
            return fields.toArray(new Field[0]);
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException("json_fields: unreadable spec " + specText, e);
        }
    }

    @Override
    public boolean isDeterministic() {
        // Not true, but it keeps the planner from inlining one parse into every field reference.
        return false;
    }
}
