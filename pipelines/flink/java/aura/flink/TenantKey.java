package aura.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/** The tenant of a parsed row: TenantWindower's key. */
public class TenantKey implements KeySelector<Row, String> {
    private static final long serialVersionUID = 1L;

    @Override
    public String getKey(Row row) {
        return row.getFieldAs("tenant");
    }
}
