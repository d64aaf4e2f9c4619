package aura.flink;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.types.Row;

/**
 * For tests: stdin split at '\n' into lines of bytes; one JSON line out per line in:
 * {"blank": true}, {"ok": false} or the parsed fields, every double as its IEEE 754 bits (a
 * long) so a comparison with Python is bit-exact, and the packed record (base64). With the
 * argument "join": then one more line, the accepted records as WindowRows joins them for the
 * window 2026-01-01T00:00 + 10 s: {"key", "start", "end", "heads", "meta"} (bytes in base64; WindowRows).
 */
public final class ParseMain {
    private ParseMain() {}

    public static void main(String[] args) throws IOException {
        byte[] all = System.in.readAllBytes();
        Writer w = new OutputStreamWriter(System.out, StandardCharsets.UTF_8);
        JsonGenerator g = new JsonFactory().createGenerator(w);
        g.setRootValueSeparator(null);
        List<byte[]> packed = new ArrayList<>();
        int start = 0;
        while (start < all.length) {
            int end = start;
            while (end < all.length && all[end] != '\n') {
                end++;
            }
            write(g, Arrays.copyOfRange(all, start, end), packed);
            g.flush();
            w.write('\n');
            start = end + 1;
        }
        if (args.length > 0 && args[0].equals("join")) {
            writeJoined(g, packed);
            g.flush();
            w.write('\n');
        }
        w.flush();
    }

    private static void writeJoined(JsonGenerator g, List<byte[]> packed) throws IOException {
        long start = LocalDateTime.of(2026, 1, 1, 0, 0).toInstant(ZoneOffset.UTC).toEpochMilli();
        Row out = WindowRows.of("t", start, start + 10_000, packed);
        Row value = out.getFieldAs(1);
        g.writeStartObject();
        g.writeStringField("key", out.getFieldAs(0));
        g.writeNumberField("start", (long) value.getFieldAs(0));
        g.writeNumberField("end", (long) value.getFieldAs(1));
        g.writeBinaryField("heads", value.getFieldAs(2));
        g.writeBinaryField("meta", value.getFieldAs(3));
        g.writeEndObject();
    }

    private static void write(JsonGenerator g, byte[] line, List<byte[]> packed) throws IOException {
        g.writeStartObject();
        if (TelemetryParser.isBlank(line)) {
            g.writeBooleanField("blank", true);
            g.writeEndObject();
            return;
        }
        TelemetryParser.Parsed r = TelemetryParser.parse(line);
        g.writeBooleanField("ok", r != null);
        if (r != null) {
            g.writeStringField("tenant", r.tenant);
            g.writeStringField("agent", r.agent);
            g.writeNumberField("et_bits", Double.doubleToRawLongBits(r.eventTime));
            g.writeNumberField("et_ms", r.eventTimeMs);
            g.writeArrayFieldStart("metric_bits");
            for (double x : r.metrics) {
                g.writeNumber(Double.doubleToRawLongBits(x));
            }
            g.writeEndArray();
            byte[] rec = TelemetryParser.pack(r);
            packed.add(rec);
            g.writeBinaryField("packed", rec);
        }
        g.writeEndObject();
    }
}
