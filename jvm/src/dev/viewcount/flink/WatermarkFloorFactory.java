package dev.viewcount.flink;

import java.util.Collections;
import java.util.Set;

import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.connector.sink.SinkV2Provider;
import org.apache.flink.table.factories.DynamicTableSinkFactory;
import org.apache.flink.table.factories.FactoryUtil;

/**
 * The {@code viewcount-watermark-floor} sink: fed the rows of a windowed aggregation (a column
 * {@code window_start}, TIMESTAMP(3) in UTC, among others), it writes with every checkpoint the floor a job
 * restored from that checkpoint must start its watermark at ({@link WatermarkFloorSink}), one small
 * file per checkpoint id in {@code path}. One writer: parallelism 1.
 */
public class WatermarkFloorFactory implements DynamicTableSinkFactory {
    public static final String IDENTIFIER = "viewcount-watermark-floor";
    static final String WINDOW_START = "window_start";
    public static final ConfigOption<String> PATH =
            ConfigOptions.key("path").stringType().noDefaultValue()
                    .withDescription("the folder of the floors, one file per checkpoint id (a Flink file system URI)");

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Set.of(PATH);
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Collections.emptySet();
    }

    @Override
    public DynamicTableSink createDynamicTableSink(Context context) {
        FactoryUtil.TableFactoryHelper helper = FactoryUtil.createTableFactoryHelper(this, context);
        helper.validate();
        int windowStart = context.getCatalogTable().getResolvedSchema().getColumnNames().indexOf(WINDOW_START);
        if (windowStart < 0) {
            throw new IllegalArgumentException(IDENTIFIER + " needs a column " + WINDOW_START);
        }
        return new TableSink(helper.getOptions().get(PATH), windowStart);
    }

    private static final class TableSink implements DynamicTableSink {
        private final String path;
        private final int windowStart;

        TableSink(String path, int windowStart) {
            this.path = path;
            this.windowStart = windowStart;
        }

        @Override
        public ChangelogMode getChangelogMode(ChangelogMode requestedMode) {
            return ChangelogMode.insertOnly();
        }

        @Override
        public SinkRuntimeProvider getSinkRuntimeProvider(Context context) {
            return SinkV2Provider.of(new WatermarkFloorSink(path, windowStart), 1);
        }

        @Override
        public DynamicTableSink copy() {
            return new TableSink(path, windowStart);
        }

        @Override
        public String asSummaryString() {
            return IDENTIFIER;
        }
    }
}
