package aura.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;

import org.apache.flink.types.Row;

/**
 * A closed (tenant, window) as it crosses into Python: (tenant, (start ms, end ms, heads, meta)),
 * the tenant to key by on the JVM and the window's packed records (TelemetryParser.pack) turned
 * into columns that Python reads with numpy.frombuffer (pipelines/flink/assemble.py), so the
 * window crosses once, as one element, and nothing is decoded per record in Python.
 *
 * <p>heads (little-endian doubles): per record its event time and 8 metrics, then per call its
 * count, errors and latency_ms (records' calls back to back, in record order).
 *
 * <p>meta (little-endian): int64 wall-clock ms when the window closed here and when its columns
 * were built; int32 records n,
 * calls c, bytes of the names, bytes of the duplicates; int32[n] each record's agent (index
 * into the names); int32[n] each record's number of calls; int32[c] each call's dst (index into
 * the names); the names as one JSON array of strings, each distinct agent and dst once, in
 * first-seen order (Python sorts them); the duplicates as one JSON array of [record index,
 * calls as written] for every record whose (agent, event time) another record of the window
 * shares (Python breaks those ties exactly as build_snapshot does).
 */
public final class WindowRows {
    private static final int HEAD = 8 * TelemetryParser.PACKED_DOUBLES;
    /** Bytes of meta before the int32 columns. */
    public static final int META_HEADER = 8 * 2 + 4 * 4;

    private WindowRows() {}

    /**
     * The distinct names of a window, numbered in first-seen order: open addressing on a 64-bit
     * hash of a name's JSON literal, the literals kept back to back in the JSON array handed over
     * (a lookup touches this small table and array, not the record the name first came in).
     */
    private static final class Names {
        private final ByteArrayOutputStream json = new ByteArrayOutputStream(1 << 16);
        private int[] start = new int[1024];
        private int[] length = new int[1024];
        private int n;
        private long[] hashes = new long[1 << 12];
        private int[] slots = new int[1 << 12]; // id + 1, 0: empty

        Names() {
            json.write('[');
        }

        /** The id of the name whose literal is r[off, off + len). */
        int id(byte[] r, int off, int len) {
            long h = 0xcbf29ce484222325L;
            for (int i = off; i < off + len; i++) {
                h = (h ^ r[i]) * 0x100000001b3L;
            }
            int mask = slots.length - 1;
            for (int at = (int) (h ^ (h >>> 29)) & mask; ; at = (at + 1) & mask) {
                int id = slots[at] - 1;
                if (id < 0) {
                    return add(h, at, r, off, len);
                }
                if (hashes[at] == h && length[id] == len
                        && Arrays.equals(json.buffer(), start[id], start[id] + len, r, off, off + len)) {
                    return id;
                }
            }
        }

        private int add(long h, int at, byte[] r, int off, int len) {
            if (n == start.length) {
                start = Arrays.copyOf(start, 2 * n);
                length = Arrays.copyOf(length, 2 * n);
            }
            if (n > 0) {
                json.write(',');
            }
            start[n] = json.size();
            length[n] = len;
            json.write(r, off, len);
            hashes[at] = h;
            slots[at] = n + 1;
            if (2 * ++n > slots.length) {
                grow();
            }
            return n - 1;
        }

        private void grow() {
            long[] oldHashes = hashes;
            int[] oldSlots = slots;
            hashes = new long[2 * oldSlots.length];
            slots = new int[2 * oldSlots.length];
            int mask = slots.length - 1;
            for (int i = 0; i < oldSlots.length; i++) {
                if (oldSlots[i] != 0) {
                    long h = oldHashes[i];
                    int at = (int) (h ^ (h >>> 29)) & mask;
                    while (slots[at] != 0) {
                        at = (at + 1) & mask;
                    }
                    hashes[at] = h;
                    slots[at] = oldSlots[i];
                }
            }
        }

        /** The names as one JSON array. */
        byte[] toJson() {
            json.write(']');
            return json.toByteArray();
        }
    }

    /** ByteArrayOutputStream with its buffer readable (for comparing in place). */
    private static final class ByteArrayOutputStream extends java.io.ByteArrayOutputStream {
        ByteArrayOutputStream(int size) {
            super(size);
        }

        byte[] buffer() {
            return buf;
        }
    }

    private static int intAt(byte[] r, int p) {
        return (r[p] & 0xff) | (r[p + 1] & 0xff) << 8 | (r[p + 2] & 0xff) << 16 | (r[p + 3] & 0xff) << 24;
    }

    private static long longAt(byte[] r, int p) {
        return (intAt(r, p) & 0xffffffffL) | (long) intAt(r, p + 4) << 32;
    }

    /** The row of one window [start, end) of a tenant, from its packed records. */
    public static Row of(String tenant, long start, long end, List<byte[]> recs) {
        long closedMs = System.currentTimeMillis();
        int n = recs.size();
        int c = 0;
        for (byte[] r : recs) {
            c += intAt(r, HEAD);
        }
        byte[] heads = new byte[HEAD * n + 24 * c];
        ByteBuffer cols = ByteBuffer.allocate(4 * (2 * n + c)).order(ByteOrder.LITTLE_ENDIAN);
        Names names = new Names();
        int[] agent = new int[n];
        int[] nCalls = new int[n];
        int[] dst = new int[c];
        long[] et = new long[n];
        int k = 0;
        for (int i = 0; i < n; i++) {
            byte[] r = recs.get(i);
            System.arraycopy(r, 0, heads, HEAD * i, HEAD);
            et[i] = Double.doubleToLongBits(Double.longBitsToDouble(longAt(r, 0)) + 0.0); // -0.0 is 0.0
            int m = intAt(r, HEAD);
            nCalls[i] = m;
            System.arraycopy(r, HEAD + 4, heads, HEAD * n + 24 * k, 24 * m);
            int p = HEAD + 4 + 24 * m;
            for (int j = -1; j < m; j++) {
                int len = intAt(r, p);
                int id = names.id(r, p + 4, len);
                if (j < 0) {
                    agent[i] = id;
                } else {
                    dst[k++] = id;
                }
                p += 4 + len;
            }
        }
        for (int x : agent) {
            cols.putInt(x);
        }
        for (int x : nCalls) {
            cols.putInt(x);
        }
        for (int x : dst) {
            cols.putInt(x);
        }
        byte[] nameBytes = names.toJson();
        byte[] dupBytes = duplicates(recs, agent, et);
        ByteBuffer meta = ByteBuffer.allocate(META_HEADER + cols.capacity() + nameBytes.length + dupBytes.length)
                .order(ByteOrder.LITTLE_ENDIAN);
        meta.putLong(closedMs).putLong(System.currentTimeMillis())
                .putInt(n).putInt(c).putInt(nameBytes.length).putInt(dupBytes.length);
        meta.put(cols.array()).put(nameBytes).put(dupBytes);
        return Row.of(tenant, Row.of(start, end, heads, meta.array()));
    }

    /** JSON [[record index, calls as written], ...] of the records sharing their (agent, event time). */
    private static byte[] duplicates(List<byte[]> recs, int[] agent, long[] et) {
        int n = agent.length;
        int cap = Integer.highestOneBit(Math.max(2 * n, 2) - 1) << 1; // a power of two >= 2n
        int[] slot = new int[cap]; // record index + 1 of the first record of a key, 0: empty
        boolean[] dup = new boolean[n];
        boolean any = false;
        for (int i = 0; i < n; i++) {
            long h = (agent[i] * 0x9E3779B97F4A7C15L) ^ et[i];
            h ^= h >>> 29;
            h *= 0xBF58476D1CE4E5B9L;
            int at = (int) (h ^ (h >>> 32)) & (cap - 1);
            while (slot[at] != 0) {
                int j = slot[at] - 1;
                if (agent[j] == agent[i] && et[j] == et[i]) {
                    dup[i] = dup[j] = any = true;
                    break;
                }
                at = (at + 1) & (cap - 1);
            }
            if (slot[at] == 0) {
                slot[at] = i + 1;
            }
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(64);
        out.write('[');
        boolean first = true;
        for (int i = 0; any && i < n; i++) {
            if (dup[i]) {
                byte[] r = recs.get(i);
                int p = HEAD + 4 + 24 * intAt(r, HEAD);
                for (int j = 0; j <= intAt(r, HEAD); j++) {
                    p += 4 + intAt(r, p);
                }
                byte[] head = ((first ? "[" : ",[") + i + ",").getBytes(StandardCharsets.US_ASCII);
                out.write(head, 0, head.length);
                out.write(r, p, r.length - p);
                out.write(']');
                first = false;
            }
        }
        out.write(']');
        return out.toByteArray();
    }
}
