package aura.flink;

import java.util.List;

import org.apache.flink.types.Row;

/**
 * A closed (tenant, window) as it crosses into Python: (tenant, (start ms, end ms, heads, meta)),
 * the tenant to key by on the JVM and the window's packed records (TelemetryParser.pack) joined
 * into two byte arrays - every record's doubles back to back (the pack's head) and one JSON array
 * of their [agent_id, calls] parts - so the window crosses once, as one element, and decodes
 * without per-record slicing (pipelines/flink/assemble.py).
 */
public final class WindowRows {
    private static final int HEAD = 8 * TelemetryParser.PACKED_DOUBLES;

    private WindowRows() {}

    /** The row of one window [start, end) of a tenant, from its packed records. */
    public static Row of(String tenant, long start, long end, List<byte[]> recs) {
        int metaLen = 1 + Math.max(recs.size(), 1); // '[', then ',' between and ']' after
        for (byte[] r : recs) {
            metaLen += r.length - HEAD;
        }
        byte[] heads = new byte[HEAD * recs.size()];
        byte[] meta = new byte[metaLen];
        int m = 0;
        meta[m++] = '[';
        for (int i = 0; i < recs.size(); i++) {
            byte[] r = recs.get(i);
            System.arraycopy(r, 0, heads, HEAD * i, HEAD);
            if (i > 0) {
                meta[m++] = ',';
            }
            System.arraycopy(r, HEAD, meta, m, r.length - HEAD);
            m += r.length - HEAD;
        }
        meta[m] = ']';
        return Row.of(tenant, Row.of(start, end, heads, meta));
    }
}
