package dev.viewcount.flink;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.ByteBuffer;
import java.util.Collection;
import java.util.List;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.api.connector.sink2.SupportsWriterState;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.core.fs.FileStatus;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.fs.Path;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.table.data.RowData;

/**
 * Where a job restored from a checkpoint must start its watermark: the last millisecond of the
 * newest window closed before that checkpoint, written as the checkpoint is taken.
 *
 * <p>Flink keeps no watermark in its checkpoints. A restored job's windows hold only what was still
 * open at the checkpoint; an event replayed after it for a window that had already fired would open
 * that window again with only itself in it. The windows fire on the watermark, and with aligned
 * checkpoints every window operator has seen the same watermarks before the same barrier: the
 * watermark this sink holds when it snapshots (it is fed the windows' rows, behind them) is the
 * one every window had, and every window up to it has fired. So the floor of checkpoint N is
 * exact, and it is on disk before checkpoint N can complete, which a floor read from the outputs
 * (committed only after the checkpoint completes) is not.
 *
 * <p>At the end of a drained run the watermark is the largest there is: the floor is then the last
 * window fired. Files: {@code <path>/<checkpoint id>} holding the floor in decimal, or nothing when
 * no window has closed yet; the newest {@link #KEPT} are kept, and a partial file older than the
 * checkpoint being written is removed.
 */
public class WatermarkFloorSink implements Sink<RowData>, SupportsWriterState<RowData, Long> {
    static final int KEPT = 20;
    private static final long NONE = Long.MIN_VALUE;
    private static final long WINDOW_MS = 60_000L;
    private static final String PARTIAL = ".partial";

    private final String path;
    private final int windowStart;

    public WatermarkFloorSink(String path, int windowStart) {
        this.path = path;
        this.windowStart = windowStart;
    }

    @Override
    public StatefulSinkWriter<RowData, Long> createWriter(WriterInitContext context) {
        return new Writer(new Path(path), windowStart, NONE);
    }

    @Override
    public StatefulSinkWriter<RowData, Long> restoreWriter(WriterInitContext context, Collection<Long> states) {
        long floor = NONE;
        for (Long state : states) {
            floor = Math.max(floor, state);
        }
        return new Writer(new Path(path), windowStart, floor);
    }

    @Override
    public SimpleVersionedSerializer<Long> getWriterStateSerializer() {
        return new FloorSerializer();
    }

    static final class Writer implements StatefulSinkWriter<RowData, Long> {
        private final Path folder;
        private final int windowStart;
        private long watermark;
        private long newestWindowLast;

        Writer(Path folder, int windowStart, long restored) {
            this.folder = folder;
            this.windowStart = windowStart;
            this.watermark = restored;
            this.newestWindowLast = restored;
        }

        @Override
        public void write(RowData row, Context context) {
            long windowLast = row.getTimestamp(windowStart, 3).getMillisecond() + WINDOW_MS - 1;
            newestWindowLast = Math.max(newestWindowLast, windowLast);
        }

        @Override
        public void writeWatermark(Watermark mark) {
            watermark = Math.max(watermark, mark.getTimestamp());
        }

        long floor() {
            return watermark == Long.MAX_VALUE ? newestWindowLast : watermark;
        }

        @Override
        public List<Long> snapshotState(long checkpointId) throws IOException {
            long floor = floor();
            FileSystem fs = folder.getFileSystem();
            fs.mkdirs(folder);
            Path target = new Path(folder, Long.toString(checkpointId));
            Path partial = new Path(folder, checkpointId + PARTIAL);
            try (OutputStream out = fs.create(partial, FileSystem.WriteMode.OVERWRITE)) {
                out.write((floor == NONE ? "" : Long.toString(floor)).getBytes(StandardCharsets.US_ASCII));
            }
            fs.rename(partial, target);
            prune(fs, checkpointId);
            return List.of(floor);
        }

        private void prune(FileSystem fs, long checkpointId) throws IOException {
            FileStatus[] files = fs.listStatus(folder);
            if (files == null) {
                return;
            }
            for (FileStatus file : files) {
                // "<id>", or "<id>.partial" left by a writer killed between writing and renaming.
                String name = file.getPath().getName();
                boolean partial = name.endsWith(PARTIAL);
                String id = partial ? name.substring(0, name.length() - PARTIAL.length()) : name;
                if (id.isEmpty() || !id.chars().allMatch(Character::isDigit)) {
                    continue;
                }
                // No restore point of this job is older than the KEPT newest checkpoints.
                if (Long.parseLong(id) < (partial ? checkpointId : checkpointId - KEPT)) {
                    fs.delete(file.getPath(), false);
                }
            }
        }

        @Override
        public void flush(boolean endOfInput) {}

        @Override
        public void close() {}
    }

    static final class FloorSerializer implements SimpleVersionedSerializer<Long> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(Long floor) {
            return ByteBuffer.allocate(Long.BYTES).putLong(floor).array();
        }

        @Override
        public Long deserialize(int version, byte[] serialized) throws IOException {
            if (version != 1 || serialized.length != Long.BYTES) {
                throw new IOException("unknown watermark floor state, version " + version);
            }
            return ByteBuffer.wrap(serialized).getLong();
        }
    }
}
