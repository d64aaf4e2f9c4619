package aura.flink;

import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.types.Row;

/**
 * Keeps the rows of the combined query whose first column (kind) is the given one: splits
 * window chunks from dead letters on the JVM, so each Python operator gets only its rows.
 */
public class KindFilter implements FilterFunction<Row> {
    private static final long serialVersionUID = 1L;
    private final String kind;

    public KindFilter(String kind) {
        this.kind = kind;
    }

    @Override
    public boolean filter(Row row) {
        return kind.equals(row.getField(0));
    }
}
