package aura.flink;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Event-time windows per tenant, each tenant on its own watermark. Keyed by tenant (TenantKey),
 * over the parsed rows the parser accepted; emits each closed window once, as WindowRows.of.
 *
 * <p>Keyed state (checkpointed): the tenant's clock - its watermark (largest event time seen
 * minus the out-of-orderness), largest event time, when the next window closes, a record counter
 * and the idleness bookkeeping - and its buffered packed records (counter -> record). Windows
 * are epoch-aligned [k * slide, k * slide + size). A record is late (a dead letter on
 * ParsedRows.dead(), reason named in Python) when the earliest window it belongs to has closed
 * for its tenant's watermark, as Flink's slicing window operator decides; no allowed lateness.
 * A window closes when its end - 1 <= the tenant's watermark; a record is dropped from state
 * once the last window it belongs to has closed.
 *
 * <p>A tenant without records for idleMs of processing time (idleMs > 0) closes every window
 * it has records in (its watermark moves to the end of the last one: later records of those
 * windows are late). At the end of a bounded input, or when a job is drained, the stream's
 * watermark goes to the end of time (the job assigns no other) and an event-time timer there
 * closes what is left.
 */
public class TenantWindower extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;
    // the clock's fields
    private static final int WATERMARK = 0, MAX_ET = 1, NEXT_CLOSE = 2, SEQ = 3, LAST_SEEN = 4, IDLE_TIMER = 5;

    private final long size;
    private final long slide;
    private final long lag;
    private final long idleMs;
    private transient ValueState<long[]> clock;
    private transient MapState<Long, byte[]> records;

    /** Windows of sizeMs every slideMs; watermark lag outOfOrdernessMs; idleMs 0: no idleness. */
    public TenantWindower(long sizeMs, long slideMs, long outOfOrdernessMs, long idleMs) {
        if (slideMs <= 0 || slideMs > sizeMs) {
            throw new IllegalArgumentException("slide must be in (0, size]");
        }
        this.size = sizeMs;
        this.slide = slideMs;
        this.lag = outOfOrdernessMs;
        this.idleMs = idleMs;
    }

    @Override
    public void open(OpenContext ctx) {
        clock = getRuntimeContext().getState(
                new ValueStateDescriptor<>("clock", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
        records = getRuntimeContext().getMapState(new MapStateDescriptor<>(
                "records", Types.LONG, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
    }

    /** End of the earliest window holding event time t (ms). */
    private long firstEnd(long t) {
        return (Math.floorDiv(t - size, slide) + 1) * slide + size;
    }

    /** End of the latest window holding event time t (ms). */
    private long lastEnd(long t) {
        return Math.floorDiv(t, slide) * slide + size;
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        long t = row.<Long>getFieldAs("et_ms");
        long[] c = clock.value();
        if (c == null) {
            c = new long[] {Long.MIN_VALUE, Long.MIN_VALUE, Long.MAX_VALUE, 0, 0, 0};
            ctx.timerService().registerEventTimeTimer(Long.MAX_VALUE); // end of input
        }
        if (firstEnd(t) - 1 <= c[WATERMARK]) {
            ctx.output(ParsedRows.dead(), ParsedRows.deadRow(row, true));
            return;
        }
        records.put(c[SEQ]++, row.getFieldAs("rec"));
        c[NEXT_CLOSE] = Math.min(c[NEXT_CLOSE], firstEnd(t) - 1);
        c[MAX_ET] = Math.max(c[MAX_ET], t);
        if (idleMs > 0) {
            c[LAST_SEEN] = ctx.timerService().currentProcessingTime();
            if (c[IDLE_TIMER] == 0) {
                c[IDLE_TIMER] = c[LAST_SEEN] + idleMs;
                ctx.timerService().registerProcessingTimeTimer(c[IDLE_TIMER]);
            }
        }
        advance(c, c[MAX_ET] - lag, ctx.getCurrentKey(), out);
        clock.update(c);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        long[] c = clock.value();
        if (c == null) {
            return;
        }
        if (ctx.timeDomain() == TimeDomain.EVENT_TIME) {
            advance(c, Long.MAX_VALUE, ctx.getCurrentKey(), out);
        } else if (timestamp == c[IDLE_TIMER]) {
            if (ctx.timerService().currentProcessingTime() - c[LAST_SEEN] >= idleMs) {
                c[IDLE_TIMER] = 0;
                advance(c, lastEnd(c[MAX_ET]) - 1, ctx.getCurrentKey(), out);
            } else {
                c[IDLE_TIMER] = c[LAST_SEEN] + idleMs;
                ctx.timerService().registerProcessingTimeTimer(c[IDLE_TIMER]);
            }
        }
        clock.update(c);
    }

    /** Moves the tenant's watermark to wm (if later) and emits the windows that closes, in order. */
    private void advance(long[] c, long wm, String tenant, Collector<Row> out) throws Exception {
        long before = c[WATERMARK];
        if (wm <= before) {
            return;
        }
        c[WATERMARK] = wm;
        if (wm < c[NEXT_CLOSE]) {
            return;
        }
        TreeMap<Long, List<byte[]>> closed = new TreeMap<>();
        long next = Long.MAX_VALUE;
        for (Iterator<Map.Entry<Long, byte[]>> it = records.iterator(); it.hasNext(); ) {
            byte[] rec = it.next().getValue();
            long t = TelemetryParser.packedEpochMs(rec);
            long last = lastEnd(t);
            for (long end = firstEnd(t); end <= last; end += slide) {
                if (end - 1 > wm) {
                    next = Math.min(next, end - 1);
                    break;
                }
                if (end - 1 > before) {
                    closed.computeIfAbsent(end - size, k -> new ArrayList<>()).add(rec);
                }
            }
            if (last - 1 <= wm) {
                it.remove();
            }
        }
        c[NEXT_CLOSE] = next;
        for (Map.Entry<Long, List<byte[]>> w : closed.entrySet()) {
            out.collect(WindowRows.of(tenant, w.getKey(), w.getKey() + size, w.getValue()));
        }
    }
}
