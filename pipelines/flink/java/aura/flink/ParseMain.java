package aura.flink;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;

/**
 * For tests: stdin split at '\n' into lines of bytes; one JSON line out per line in:
 * {"blank": true}, {"ok": false} or the parsed fields, every double as its IEEE 754 bits (a
 * long) so a comparison with Python is bit-exact, and the packed record (base64).
 */
public final class ParseMain {
    private ParseMain() {}

    public static void main(String[] args) throws IOException {
        byte[] all = System.in.readAllBytes();
        Writer w = new OutputStreamWriter(System.out, StandardCharsets.UTF_8);
        JsonGenerator g = new JsonFactory().createGenerator(w);
        g.setRootValueSeparator(null);
        int start = 0;
        while (start < all.length) {
            int end = start;
            while (end < all.length && all[end] != '\n') {
                end++;
            }
            write(g, Arrays.copyOfRange(all, start, end));
            g.flush();
            w.write('\n');
            start = end + 1;
        }
        w.flush();
    }

    private static void write(JsonGenerator g, byte[] line) throws IOException {
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
            g.writeBinaryField("packed", TelemetryParser.pack(r));
        }
        g.writeEndObject();
    }
}
