package dev.viewcount.flink;

import java.util.Arrays;

import org.apache.datasketches.hll.HllSketch;
import org.apache.datasketches.hll.TgtHllType;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * {@code viewer_sketch(viewer_ids, lg_k, target_type)}: the DataSketches HLL sketch of a window's distinct
 * viewers, as hex of its compact bytes, and its estimate. The conventions are pipelines/rollups/sketches.py's
 * (the one home of them; lg_k and the target type, e.g. HLL_4, come from there): ids deduplicated and fed in ascending order, since
 * the HIP estimator depends on update order, so the stream and a rebuild give the same bytes.
 */
public class ViewerSketch extends ScalarFunction {
    private static final char[] HEX = "0123456789ABCDEF".toCharArray();

    public @DataTypeHint("ROW<sketch STRING, estimate DOUBLE>") Row eval(Long[] viewerIds, Integer lgK, String targetType) {
        HllSketch sketch = new HllSketch(lgK, TgtHllType.valueOf(targetType));
        if (viewerIds != null) {
            long[] ids = new long[viewerIds.length];
            int n = 0;
            for (Long id : viewerIds) {
                if (id != null) {
                    ids[n++] = id;
                }
            }
            Arrays.sort(ids, 0, n);
            for (int i = 0; i < n; i++) {
                if (i == 0 || ids[i] != ids[i - 1]) {
                    sketch.update(ids[i]);
                }
            }
        }
        byte[] bytes = sketch.toCompactByteArray();
        char[] hex = new char[bytes.length * 2];
        for (int i = 0; i < bytes.length; i++) {
            hex[2 * i] = HEX[(bytes[i] >> 4) & 0xF];
            hex[2 * i + 1] = HEX[bytes[i] & 0xF];
        }
        return Row.of(new String(hex), sketch.getEstimate());
    }

    @Override
    public boolean isDeterministic() {
        // Not true, but it keeps the planner from building the sketch once per field it reads.
        return false;
    }
}
