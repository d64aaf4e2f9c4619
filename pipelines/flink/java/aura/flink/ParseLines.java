package aura.flink;

import java.util.LinkedHashMap;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.types.RowUtils;
import org.apache.flink.util.Collector;

/**
 * Parses each line once (TelemetryParser): a (line BYTES, path STRING) row - fields by position,
 * from LandingLines or any other source - becomes the named row (line, path, ok, tenant, et_ms,
 * rec) that ParsedRows splits; none for a blank line, which is not a record. ok = false (tenant,
 * et_ms and rec null) when the parser does not accept the line; else the tenant, event time in
 * epoch ms (floor) and the packed record (TelemetryParser.pack).
 */
public class ParseLines implements FlatMapFunction<Row, Row>, ResultTypeQueryable<Row> {
    private static final long serialVersionUID = 1L;
    private static final String[] NAMES = {"line", "path", "ok", "tenant", "et_ms", "rec"};
    private static final LinkedHashMap<String, Integer> POSITIONS = new LinkedHashMap<>();

    static {
        for (int i = 0; i < NAMES.length; i++) {
            POSITIONS.put(NAMES[i], i);
        }
    }

    @Override
    public void flatMap(Row in, Collector<Row> out) {
        byte[] line = in.getFieldAs(0);
        if (line == null || TelemetryParser.isBlank(line)) {
            return;
        }
        TelemetryParser.Parsed r = TelemetryParser.parse(line);
        Object[] fields = r == null
                ? new Object[] {line, in.getField(1), false, null, null, null}
                : new Object[] {line, in.getField(1), true, r.tenant, r.eventTimeMs, TelemetryParser.pack(r)};
        out.collect(RowUtils.createRowWithNamedPositions(RowKind.INSERT, fields, POSITIONS));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW_NAMED(NAMES, Types.PRIMITIVE_ARRAY(Types.BYTE), Types.STRING, Types.BOOLEAN,
                Types.STRING, Types.LONG, Types.PRIMITIVE_ARRAY(Types.BYTE));
    }
}
