package aura.flink;

import java.time.LocalDateTime;
import java.time.ZoneOffset;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * A window row of the combined query (tenant, window_start, window_end, recs: the packed records
 * of one (tenant, window)) -> (tenant, (start ms, end ms, heads, meta)): the tenant to key by on
 * the JVM, and the records joined into two byte arrays - every record's doubles back to back
 * (TelemetryParser.pack's head) and one JSON array of their [agent_id, calls] parts - so the
 * window crosses into Python once, as one element, and decodes without per-record slicing.
 */
public class WindowRows implements MapFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    private static final int HEAD = 8 * TelemetryParser.PACKED_DOUBLES;

    @Override
    public Row map(Row row) {
        byte[][] recs = row.getFieldAs("recs");
        int metaLen = 1 + Math.max(recs.length, 1); // '[', then ',' between and ']' after
        for (byte[] r : recs) {
            metaLen += r.length - HEAD;
        }
        byte[] heads = new byte[HEAD * recs.length];
        byte[] meta = new byte[metaLen];
        int m = 0;
        meta[m++] = '[';
        for (int i = 0; i < recs.length; i++) {
            byte[] r = recs[i];
            System.arraycopy(r, 0, heads, HEAD * i, HEAD);
            if (i > 0) {
                meta[m++] = ',';
            }
            System.arraycopy(r, HEAD, meta, m, r.length - HEAD);
            m += r.length - HEAD;
        }
        meta[m] = ']';
        return Row.of(row.getFieldAs("tenant"),
                Row.of(ms(row.getFieldAs("window_start")), ms(row.getFieldAs("window_end")), heads, meta));
    }

    /** Epoch ms of a window bound (TIMESTAMP(3), UTC, as a LocalDateTime). */
    private static long ms(LocalDateTime t) {
        return t.toInstant(ZoneOffset.UTC).toEpochMilli();
    }
}
