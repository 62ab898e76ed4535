package dev.viewcount.flink;

import java.io.IOException;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Set;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * One event type's validation rules, as compiled from its file in schemas/ by the Python side
 * (pipelines/ingest/schemas.py `validation_spec`): per field its column, kind, whether it is required,
 * enum, minimum and lengths. The same rules decide in the job and in the collector.
 */
final class EventRules implements Serializable {
    private static final long serialVersionUID = 1L;

    /** One field's rules; kind is "string", "integer" or "array". */
    static final class Field implements Serializable {
        private static final long serialVersionUID = 1L;
        String name;
        String column;
        String kind;
        boolean required;
        Set<String> allowed;
        Long minimum;
        Integer minLength;
        Integer maxLength;
        String missingHint = "";
    }

    final Field[] fields;

    private EventRules(Field[] fields) {
        this.fields = fields;
    }

    int indexOf(String name) {
        for (int i = 0; i < fields.length; i++) {
            if (fields[i].name.equals(name)) {
                return i;
            }
        }
        return -1;
    }

    int indexOfColumn(String column) {
        for (int i = 0; i < fields.length; i++) {
            if (fields[i].column.equals(column)) {
                return i;
            }
        }
        return -1;
    }

    /** The spec is a JSON array of {name, column, kind, required, enum, minimum, minLength, maxLength}. */
    static EventRules compile(String specText) {
        try {
            JsonNode root = new ObjectMapper().readTree(specText);
            List<Field> fields = new ArrayList<>();
            for (JsonNode node : root) {
                Field field = new Field();
                field.name = node.get("name").asText();
                field.column = node.path("column").asText(field.name);
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
            return new EventRules(fields.toArray(new Field[0]));
        } catch (IOException e) {
            throw new IllegalArgumentException("unreadable event spec " + specText, e);
        }
    }
}
