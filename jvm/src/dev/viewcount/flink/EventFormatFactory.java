package dev.viewcount.flink;

import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.RowType;

/**
 * The {@code viewcount-event} format: a source table's rows straight from the event's JSON bytes,
 * typed and validated in one pass ({@link EventDecoder}), with {@code viewcount-event.spec} the
 * rules compiled from the event's schema.
 */
public class EventFormatFactory implements DeserializationFormatFactory {
    public static final String IDENTIFIER = "viewcount-event";
    public static final ConfigOption<String> SPEC =
            ConfigOptions.key("spec").stringType().noDefaultValue()
                    .withDescription("the event's validation rules, a JSON array (pipelines/stream/job_tables.py)");
    public static final ConfigOption<Integer> MAX_RECORD_BYTES =
            ConfigOptions.key("max-record-bytes").intType().defaultValue(65536)
                    .withDescription("a larger record is rejected (its dead letter keeps this many bytes)");

    @Override
    public DecodingFormat<DeserializationSchema<RowData>> createDecodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        FactoryUtil.validateFactoryOptions(this, formatOptions);
        EventRules rules = EventRules.compile(formatOptions.get(SPEC));
        int maxRecordBytes = formatOptions.get(MAX_RECORD_BYTES);
        return new DecodingFormat<DeserializationSchema<RowData>>() {
            @Override
            public DeserializationSchema<RowData> createRuntimeDecoder(
                    DynamicTableSource.Context sourceContext, DataType physicalDataType) {
                RowType rowType = (RowType) physicalDataType.getLogicalType();
                TypeInformation<RowData> type = sourceContext.createTypeInformation(physicalDataType);
                List<String> names = rowType.getFieldNames();
                return new EventDecoder(rules, maxRecordBytes, names.toArray(new String[0]), type);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        Set<ConfigOption<?>> options = new HashSet<>();
        options.add(SPEC);
        return options;
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Collections.singleton(MAX_RECORD_BYTES);
    }
}
