package aura.flink;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.types.Row;

/**
 * SQL table function PARSE_TELEMETRY(line BYTES): one row per line (none for a blank line, which
 * is not a record), so a LATERAL TABLE join parses each line once. ok = FALSE (every other column
 * NULL) when TelemetryParser does not accept the line; else the tenant, event time in epoch ms
 * (floor) and the packed record (TelemetryParser.pack).
 */
@FunctionHint(output = @DataTypeHint("ROW<ok BOOLEAN, tenant STRING, et_ms BIGINT, rec BYTES>"))
public class ParseTelemetry extends TableFunction<Row> {
    public void eval(byte[] line) {
        if (line == null || TelemetryParser.isBlank(line)) {
            return;
        }
        TelemetryParser.Parsed r = TelemetryParser.parse(line);
        if (r == null) {
            collect(Row.of(false, null, null, null));
        } else {
            collect(Row.of(true, r.tenant, r.eventTimeMs, TelemetryParser.pack(r)));
        }
    }
}
