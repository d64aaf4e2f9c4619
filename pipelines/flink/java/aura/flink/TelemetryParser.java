package aura.flink;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.LocalDate;
import java.util.Arrays;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadFeature;

/**
 * One NDJSON telemetry line (UTF-8 bytes) -> typed fields, or null when the line is not a record that the
 * contract (schemas/telemetry.v1.json, pipelines/telemetry.py::parse_line) accepts in the forms
 * handled here. Never looser than the contract; stricter only for rare valid forms (integers
 * beyond 64 bits, integral floats for integer fields, RFC 3339 forms other than
 * YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM), duplicate keys, schema_version other than the
 * integer 1), which Python then names. Bytes that are not UTF-8 are malformed, as for orjson.
 *
 * Doubles are Jackson's (correctly rounded, as Python's); event time from an RFC 3339 string is
 * integer microseconds / 1e6, exactly as Python's datetime.timestamp().
 */
public final class TelemetryParser {
    public static final double MAX_EPOCH_S = 8589934592.0; // 2 ** 33
    public static final double MAX_LATENCY_MS = 3600000.0;
    public static final int MAX_CALLS = 10000;
    public static final int MAX_NAME = 256;
    /** Metric order of the snapshot matrix (schemas/arrow.py METRICS). */
    public static final String[] METRICS = {
        "latency_p50_ms", "latency_p99_ms", "error_rate", "request_count", "cpu", "memory",
        "queue_depth", "in_flight"};
    private static final boolean[] INTEGER = {false, false, false, true, false, false, true, true};
    private static final int REQUIRED = (1 << 12) - 1; // 8 metrics, tenant, agent_id, ts, calls
    private static final int SCHEMA_VERSION = 1 << 12;

    // Jackson's fast double parser is correctly rounded, as Double.parseDouble and Python are
    private static final JsonFactory FACTORY =
            JsonFactory.builder().enable(StreamReadFeature.USE_FAST_DOUBLE_PARSER).build();

    /** A valid record. */
    public static final class Parsed {
        public String tenant;
        public String agent;
        public double eventTime;
        public long eventTimeMs;
        public final double[] metrics = new double[METRICS.length];
        /** The calls array exactly as written in the line (UTF-8). */
        public byte[] calls;
        /** Number of calls. */
        public int nCalls;
        /** Per call: count, errors, latency_ms (3 doubles a call). */
        public double[] callNums = new double[12];
        /** Per call: its dst. */
        public String[] callDst = new String[4];

        void addCall(String dst, double count, double errors, double latency) {
            if (nCalls == callDst.length) {
                callDst = Arrays.copyOf(callDst, 2 * nCalls);
                callNums = Arrays.copyOf(callNums, 6 * nCalls);
            }
            callDst[nCalls] = dst;
            callNums[3 * nCalls] = count;
            callNums[3 * nCalls + 1] = errors;
            callNums[3 * nCalls + 2] = latency;
            nCalls++;
        }
    }

    private TelemetryParser() {}

    /** Doubles at the head of a packed record: event time, then the metrics. */
    public static final int PACKED_DOUBLES = 1 + METRICS.length;

    /**
     * A record as bytes for the windower (little-endian): event time and the metrics as doubles;
     * int32 number of calls n, then n x (count, errors, latency_ms) as doubles; the agent_id as
     * an int32 length and a JSON string literal (UTF-8); each call's dst likewise; then the
     * calls array exactly as written (only read to break ties between duplicates). WindowRows
     * turns a window of these into columns.
     */
    public static byte[] pack(Parsed r) {
        byte[] agent = literal(r.agent);
        byte[][] dst = new byte[r.nCalls][];
        int size = 8 * PACKED_DOUBLES + 4 + 24 * r.nCalls + 4 + agent.length + 4 * r.nCalls + r.calls.length;
        for (int i = 0; i < r.nCalls; i++) {
            dst[i] = literal(r.callDst[i]);
            size += dst[i].length;
        }
        ByteBuffer b = ByteBuffer.allocate(size).order(ByteOrder.LITTLE_ENDIAN);
        b.putDouble(r.eventTime);
        for (double x : r.metrics) {
            b.putDouble(x);
        }
        b.putInt(r.nCalls);
        for (int i = 0; i < 3 * r.nCalls; i++) {
            b.putDouble(r.callNums[i]);
        }
        b.putInt(agent.length).put(agent);
        for (byte[] d : dst) {
            b.putInt(d.length).put(d);
        }
        return b.put(r.calls).array();
    }

    /** s as a JSON string literal in UTF-8. */
    static byte[] literal(String s) {
        StringBuilder sb = new StringBuilder(s.length() + 2);
        jsonString(sb, s);
        return sb.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** Event time in epoch ms (floor) of event time in seconds. */
    public static long epochMs(double eventTime) {
        return (long) Math.floor(eventTime * 1000.0);
    }

    /** Event time in epoch ms of a packed record (its first double). */
    public static long packedEpochMs(byte[] rec) {
        return epochMs(ByteBuffer.wrap(rec, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getDouble());
    }

    /** Only JSON whitespace (Python's bytes.strip() set): not a record, skipped. */
    public static boolean isBlank(byte[] line) {
        for (byte c : line) {
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != 0x0b && c != 0x0c) {
                return false;
            }
        }
        return true;
    }

    /** Strict UTF-8 (no overlong forms, no encoded surrogates), as orjson requires. */
    static boolean isUtf8(byte[] line) {
        for (byte c : line) {
            if (c < 0) {
                try {
                    StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                            .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(line));
                    return true;
                } catch (CharacterCodingException e) {
                    return false;
                }
            }
        }
        return true;
    }

    /** s as a JSON string literal (well-formed UTF-16 assumed: isName checked it). */
    static void jsonString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        sb.append('"');
    }

    /** The record, or null (malformed or not accepted here: Python names the reason). */
    public static Parsed parse(byte[] line) {
        if (line == null || !isUtf8(line)) {
            return null;
        }
        try (JsonParser p = FACTORY.createParser(line)) {
            Parsed r = record(p, line);
            return r != null && p.nextToken() == null ? r : null;
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    /** Bit of each top-level key in the seen-mask: the metrics, then these. */
    private static final String[] KEYS = {
        METRICS[0], METRICS[1], METRICS[2], METRICS[3], METRICS[4], METRICS[5], METRICS[6], METRICS[7],
        "tenant", "agent_id", "ts", "calls", "schema_version"};

    private static int keyIndex(String name) {
        for (int i = 0; i < KEYS.length; i++) {
            if (KEYS[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    private static Parsed record(JsonParser p, byte[] line) throws IOException {
        if (p.nextToken() != JsonToken.START_OBJECT) {
            return null;
        }
        Parsed r = new Parsed();
        int seen = 0;
        JsonToken t;
        while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
            String name = p.currentName();
            JsonToken v = p.nextToken();
            int k = keyIndex(name);
            if (k < 0 || (seen & (1 << k)) != 0) {
                return null; // unknown or repeated key
            }
            seen |= 1 << k;
            int m = k < METRICS.length ? k : -1;
            if (m >= 0) {
                double x = INTEGER[m] ? integer(p, v) : number(p, v);
                if (!(x >= 0)) {
                    return null;
                }
                r.metrics[m] = x;
            } else if (name.equals("tenant")) {
                r.tenant = v == JsonToken.VALUE_STRING && isTenant(p.getText()) ? p.getText() : null;
                if (r.tenant == null) {
                    return null;
                }
            } else if (name.equals("agent_id")) {
                r.agent = v == JsonToken.VALUE_STRING && isName(p.getText()) ? p.getText() : null;
                if (r.agent == null) {
                    return null;
                }
            } else if (name.equals("ts")) {
                r.eventTime = v == JsonToken.VALUE_STRING ? rfc3339(p.getText()) : number(p, v);
                if (!(r.eventTime >= 0 && r.eventTime < MAX_EPOCH_S)) {
                    return null;
                }
            } else if (name.equals("calls")) {
                if (v != JsonToken.START_ARRAY) {
                    return null;
                }
                int start = (int) p.currentTokenLocation().getByteOffset();
                if (!calls(p, r)) {
                    return null;
                }
                r.calls = Arrays.copyOfRange(line, start, (int) p.currentLocation().getByteOffset());
            } else if (name.equals("schema_version")) {
                if (v != JsonToken.VALUE_NUMBER_INT || p.getNumberType() != JsonParser.NumberType.INT
                        || p.getIntValue() != 1) {
                    return null;
                }
            } else {
                return null;
            }
        }
        if (t != JsonToken.END_OBJECT || (seen & ~SCHEMA_VERSION) != REQUIRED) {
            return null;
        }
        double[] x = r.metrics;
        boolean ok = x[0] <= MAX_LATENCY_MS && x[1] <= MAX_LATENCY_MS && x[1] >= x[0]
                && x[2] <= 1 && x[4] <= 1 && x[5] <= 1;
        if (!ok) {
            return null;
        }
        r.eventTimeMs = epochMs(r.eventTime);
        return r;
    }

    /** The calls array: objects with exactly dst, count, errors, latency_ms; errors <= count. */
    private static boolean calls(JsonParser p, Parsed r) throws IOException {
        int n = 0;
        JsonToken t;
        while ((t = p.nextToken()) == JsonToken.START_OBJECT) {
            if (++n > MAX_CALLS) {
                return false;
            }
            int seen = 0;
            double count = -1;
            double errors = -1;
            double lat = Double.NaN;
            String dst = null;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                int before = seen;
                if (name.equals("dst")) {
                    dst = v == JsonToken.VALUE_STRING ? p.getText() : null;
                    if (dst == null || !isName(dst)) {
                        return false;
                    }
                    seen |= 1;
                } else if (name.equals("count")) {
                    count = integer(p, v);
                    seen |= 2;
                } else if (name.equals("errors")) {
                    errors = integer(p, v);
                    seen |= 4;
                } else if (name.equals("latency_ms")) {
                    lat = number(p, v);
                    if (!(lat >= 0 && lat <= MAX_LATENCY_MS)) {
                        return false;
                    }
                    seen |= 8;
                } else {
                    return false;
                }
                if (seen == before) {
                    return false; // repeated key
                }
            }
            if (t != JsonToken.END_OBJECT || seen != 15 || !(count >= 0 && errors >= 0 && errors <= count)) {
                return false;
            }
            r.addCall(dst, count, errors, lat);
        }
        return t == JsonToken.END_ARRAY;
    }

    /** A JSON number as a double (NaN when not a number or an integer beyond 64 bits). */
    private static double number(JsonParser p, JsonToken v) throws IOException {
        if (v == JsonToken.VALUE_NUMBER_FLOAT) {
            return p.getDoubleValue();
        }
        if (v == JsonToken.VALUE_NUMBER_INT && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER) {
            return (double) p.getLongValue();
        }
        return Double.NaN;
    }

    /** A non-negative JSON integer (within 64 bits) as a double, else -1. */
    private static double integer(JsonParser p, JsonToken v) throws IOException {
        if (v == JsonToken.VALUE_NUMBER_INT && p.getNumberType() != JsonParser.NumberType.BIG_INTEGER) {
            long x = p.getLongValue();
            return x >= 0 ? (double) x : -1;
        }
        return -1;
    }

    /** ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ (no trailing newline either). */
    static boolean isTenant(String s) {
        if (s.isEmpty() || s.length() > 64) {
            return false;
        }
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            boolean alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
            if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-'))) {
                return false;
            }
        }
        return true;
    }

    /** 1..256 code points of well-formed UTF-16 (no lone surrogates). */
    static boolean isName(String s) {
        int n = 0;
        for (int i = 0; i < s.length(); i++, n++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c)) {
                if (i + 1 >= s.length() || !Character.isLowSurrogate(s.charAt(i + 1))) {
                    return false;
                }
                i++;
            } else if (Character.isLowSurrogate(c)) {
                return false;
            }
        }
        return n >= 1 && n <= MAX_NAME;
    }

    private static int digits(String s, int from, int n) {
        int x = 0;
        for (int i = from; i < from + n; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            x = x * 10 + (c - '0');
        }
        return x;
    }

    /** Epoch seconds of YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM), else NaN. */
    static double rfc3339(String s) {
        int n = s.length();
        if (n < 20 || s.charAt(4) != '-' || s.charAt(7) != '-' || s.charAt(10) != 'T' || s.charAt(13) != ':'
                || s.charAt(16) != ':') {
            return Double.NaN;
        }
        int year = digits(s, 0, 4);
        int month = digits(s, 5, 2);
        int day = digits(s, 8, 2);
        int hour = digits(s, 11, 2);
        int minute = digits(s, 14, 2);
        int second = digits(s, 17, 2);
        int i = 19;
        long micros = 0;
        if (s.charAt(i) == '.') {
            int k = 0;
            while (i + 1 + k < n && k < 7 && Character.isDigit(s.charAt(i + 1 + k)) && s.charAt(i + 1 + k) < 128) {
                k++;
            }
            if (k < 1 || k > 6) {
                return Double.NaN;
            }
            micros = digits(s, i + 1, k);
            for (int j = k; j < 6; j++) {
                micros *= 10;
            }
            i += 1 + k;
        }
        int offset;
        if (i == n - 1 && s.charAt(i) == 'Z') {
            offset = 0;
        } else if (i == n - 6 && (s.charAt(i) == '+' || s.charAt(i) == '-') && s.charAt(i + 3) == ':') {
            int oh = digits(s, i + 1, 2);
            int om = digits(s, i + 4, 2);
            if (oh < 0 || oh > 23 || om < 0 || om > 59) {
                return Double.NaN;
            }
            offset = (s.charAt(i) == '-' ? -1 : 1) * (oh * 3600 + om * 60);
        } else {
            return Double.NaN;
        }
        if (year < 1 || month < 1 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59
                || second < 0 || second > 59) {
            return Double.NaN;
        }
        long days;
        try {
            days = LocalDate.of(year, month, day).toEpochDay();
        } catch (RuntimeException e) {
            return Double.NaN;
        }
        long secs = days * 86400L + hour * 3600L + minute * 60L + second - offset;
        return (double) (secs * 1000000L + micros) / 1e6;
    }
}
