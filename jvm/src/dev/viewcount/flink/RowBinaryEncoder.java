package dev.viewcount.flink;

import java.io.Serializable;
import java.util.Arrays;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.utils.LogicalTypeChecks;

/**
 * One row as ClickHouse's RowBinary: every column in order, integers and floats little-endian in
 * their ClickHouse width, a String as its UTF-8 length (LEB128) and bytes, a DateTime as 4 bytes of
 * seconds. No delimiter: a Kafka record is one row, and ClickHouse's Kafka engine reads the records
 * of a block back to back. A NULL (no output of the job has one) is written as ClickHouse's default
 * of the column: 0 or the empty string.
 */
final class RowBinaryEncoder implements SerializationSchema<RowData> {
    private static final long serialVersionUID = 1L;

    /** How one column is written: where it is in the row, how it is read, how many bytes it takes. */
    static final class Column implements Serializable {
        private static final long serialVersionUID = 1L;
        enum Read { STRING, LONG, INT, SHORT, BYTE, BOOLEAN, DOUBLE, TIMESTAMP }

        final int index;
        final Read read;
        /** Bytes of a number (1, 2, 4 or 8); 0 for a String. */
        final int width;
        final int precision;

        private Column(int index, Read read, int width, int precision) {
            this.index = index;
            this.read = read;
            this.width = width;
            this.precision = precision;
        }

        /** The encoding of a column of Flink type {@code type} read by ClickHouse as {@code clickhouse};
         * null when that pair would change a value (a narrowing, a text for a number, ...). */
        static Column of(int index, LogicalType type, String clickhouse) {
            LogicalTypeRoot root = type.getTypeRoot();
            if (clickhouse.equals("String")) {
                return root == LogicalTypeRoot.VARCHAR || root == LogicalTypeRoot.CHAR
                        ? new Column(index, Read.STRING, 0, 0) : null;
            }
            if (clickhouse.equals("Float64")) {
                return root == LogicalTypeRoot.DOUBLE ? new Column(index, Read.DOUBLE, 8, 0) : null;
            }
            if (clickhouse.equals("DateTime")) {
                boolean timestamp = root == LogicalTypeRoot.TIMESTAMP_WITHOUT_TIME_ZONE
                        || root == LogicalTypeRoot.TIMESTAMP_WITH_LOCAL_TIME_ZONE;
                return timestamp ? new Column(index, Read.TIMESTAMP, 4, LogicalTypeChecks.getPrecision(type)) : null;
            }
            int width;
            switch (clickhouse) {
                case "UInt64": case "Int64": width = 8; break;
                case "UInt32": case "Int32": width = 4; break;
                case "UInt16": case "Int16": width = 2; break;
                case "UInt8": case "Int8": width = 1; break;
                default: return null;
            }
            Read read;
            int bytes;
            switch (root) {
                case BIGINT: read = Read.LONG; bytes = 8; break;
                case INTEGER: read = Read.INT; bytes = 4; break;
                case SMALLINT: read = Read.SHORT; bytes = 2; break;
                case TINYINT: read = Read.BYTE; bytes = 1; break;
                case BOOLEAN: read = Read.BOOLEAN; bytes = 1; break;
                default: return null;
            }
            return bytes <= width ? new Column(index, read, width, 0) : null;  // widen, never narrow
        }
    }

    private final Column[] columns;
    private transient byte[] buffer;
    private transient int length;

    RowBinaryEncoder(Column[] columns) {
        this.columns = columns;
    }

    @Override
    public void open(InitializationContext context) {
        buffer = new byte[256];
    }

    @Override
    public byte[] serialize(RowData row) {
        if (buffer == null) {
            buffer = new byte[256];
        }
        length = 0;
        for (Column column : columns) {
            boolean nul = row.isNullAt(column.index);
            switch (column.read) {
                case STRING:
                    byte[] text = nul ? new byte[0] : row.getString(column.index).toBytes();
                    writeLength(text.length);
                    ensure(text.length);
                    System.arraycopy(text, 0, buffer, length, text.length);
                    length += text.length;
                    break;
                case DOUBLE:
                    writeNumber(nul ? 0L : Double.doubleToRawLongBits(row.getDouble(column.index)), 8);
                    break;
                case TIMESTAMP:
                    long millis = nul ? 0L : row.getTimestamp(column.index, column.precision).getMillisecond();
                    writeNumber(Math.floorDiv(millis, 1000L), 4);
                    break;
                default:
                    writeNumber(nul ? 0L : integer(row, column), column.width);
            }
        }
        return Arrays.copyOf(buffer, length);
    }

    private static long integer(RowData row, Column column) {
        switch (column.read) {
            case LONG: return row.getLong(column.index);
            case INT: return row.getInt(column.index);
            case SHORT: return row.getShort(column.index);
            case BYTE: return row.getByte(column.index);
            default: return row.getBoolean(column.index) ? 1L : 0L;
        }
    }

    /** The low {@code width} bytes of {@code value}, little-endian (sign-extended when widening). */
    private void writeNumber(long value, int width) {
        ensure(width);
        for (int i = 0; i < width; i++) {
            buffer[length++] = (byte) (value >>> (8 * i));
        }
    }

    /** LEB128, as ClickHouse writes a String's length. */
    private void writeLength(int value) {
        ensure(5);
        long rest = value & 0xFFFFFFFFL;
        while (rest >= 0x80) {
            buffer[length++] = (byte) (rest | 0x80);
            rest >>>= 7;
        }
        buffer[length++] = (byte) rest;
    }

    private void ensure(int more) {
        if (length + more > buffer.length) {
            buffer = Arrays.copyOf(buffer, Math.max(buffer.length * 2, length + more));
        }
    }
}
