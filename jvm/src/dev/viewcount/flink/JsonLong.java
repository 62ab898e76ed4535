package dev.viewcount.flink;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * One top-level integer field of a JSON object, or NULL when absent, not an integer or not JSON.
 * Stops reading at the field: the job uses it for the event time its watermark is built on,
 * which must be known before the full decode.
 */
public class JsonLong extends ScalarFunction {
    private static final JsonFactory FACTORY = new JsonFactory();

    public Long eval(String payload, String field) {
        if (payload == null || field == null) {
            return null;
        }
        try (JsonParser parser = FACTORY.createParser(payload)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                boolean wanted = field.equals(parser.currentName());
                JsonToken value = parser.nextToken();
                if (wanted) {
                    return value == JsonToken.VALUE_NUMBER_INT ? parser.getLongValue() : null;
                }
                parser.skipChildren();
            }
            return null;
        } catch (Exception malformed) {
            return null;
        }
    }
}
