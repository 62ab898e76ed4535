package dev.viewcount.flink;

import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code emit_version()}: the version of a rollup row, the wall-clock milliseconds at which the job
 * emitted it. A window emitted again (after a restore, or by a late event) carries a higher
 * version and replaces the earlier row in its ReplacingMergeTree table.
 */
public class EmitVersion extends ScalarFunction {
    public long eval() {
        return System.currentTimeMillis();
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }
}
