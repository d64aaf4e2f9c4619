package aura.flink;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Splits the parsed lines (ParseLines: line, path, ok, tenant, et_ms, rec): rows the
 * parser accepted go on (to TenantWindower, keyed by tenant); the others become dead-letter rows
 * (line, path, late) on the side output {@link #dead()}, where TenantWindower puts late records too.
 */
public class ParsedRows extends ProcessFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    private static final OutputTag<Row> DEAD = new OutputTag<>("dead", Types.ROW_NAMED(
            new String[] {"line", "path", "late"}, Types.PRIMITIVE_ARRAY(Types.BYTE), Types.STRING, Types.BOOLEAN));

    /** The side output of dead-letter rows (line, path, late); the reason is named in Python. */
    public static OutputTag<Row> dead() {
        return DEAD;
    }

    /** The dead-letter row of a parsed line. */
    static Row deadRow(Row parsed, boolean late) {
        return Row.of(parsed.getField("line"), parsed.getField("path"), late);
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) {
        if (Boolean.TRUE.equals(row.getField("ok"))) {
            out.collect(row);
        } else {
            ctx.output(DEAD, deadRow(row, false));
        }
    }
}
