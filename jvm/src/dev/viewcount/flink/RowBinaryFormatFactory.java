package dev.viewcount.flink;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Set;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.factories.SerializationFormatFactory;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.RowType;

/**
 * The {@code clickhouse-rowbinary} format: each row as ClickHouse's RowBinary, the bytes its Kafka
 * engine reads without parsing text ({@link RowBinaryEncoder}). {@code clickhouse-rowbinary.types}
 * names the ClickHouse type of each column, in the table's order (pipelines/store/tables.py, the
 * Kafka table's own declaration), so that writer and reader agree on every byte.
 */
public class RowBinaryFormatFactory implements SerializationFormatFactory {
    public static final String IDENTIFIER = "clickhouse-rowbinary";
    public static final ConfigOption<String> TYPES =
            ConfigOptions.key("types").stringType().noDefaultValue()
                    .withDescription("the ClickHouse type of each column, comma-separated, in the table's order");

    @Override
    public EncodingFormat<SerializationSchema<RowData>> createEncodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        FactoryUtil.validateFactoryOptions(this, formatOptions);
        String types = formatOptions.get(TYPES);
        return new EncodingFormat<SerializationSchema<RowData>>() {
            @Override
            public SerializationSchema<RowData> createRuntimeEncoder(
                    DynamicTableSink.Context sinkContext, DataType physicalDataType) {
                return new RowBinaryEncoder(columns((RowType) physicalDataType.getLogicalType(), types));
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    /** Each column's encoding, from its Flink type and the ClickHouse type it is read as. */
    static RowBinaryEncoder.Column[] columns(RowType rowType, String types) {
        String[] clickhouse = types.split(",", -1);
        List<RowType.RowField> fields = rowType.getFields();
        if (clickhouse.length != fields.size()) {
            throw new ValidationException(IDENTIFIER + ": " + clickhouse.length + " types for " + fields.size()
                    + " columns (" + rowType.getFieldNames() + ")");
        }
        List<RowBinaryEncoder.Column> columns = new ArrayList<>();
        for (int i = 0; i < clickhouse.length; i++) {
            LogicalType type = fields.get(i).getType();
            RowBinaryEncoder.Column column = RowBinaryEncoder.Column.of(i, type, clickhouse[i].trim());
            if (column == null) {
                throw new ValidationException(IDENTIFIER + ": column " + fields.get(i).getName() + " of type " + type
                        + " cannot be written as ClickHouse's " + clickhouse[i].trim());
            }
            columns.add(column);
        }
        return columns.toArray(new RowBinaryEncoder.Column[0]);
    }

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Set.of(TYPES);
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Collections.emptySet();
    }
}
