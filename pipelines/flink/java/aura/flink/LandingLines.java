package aura.flink;

import java.io.IOException;
import java.time.Duration;
import java.util.Arrays;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.impl.StreamFormatAdapter;
import org.apache.flink.connector.file.src.reader.BulkFormat;
import org.apache.flink.connector.file.src.reader.SimpleStreamFormat;
import org.apache.flink.connector.file.src.reader.StreamFormat;
import org.apache.flink.connector.file.src.util.MutableRecordAndPosition;
import org.apache.flink.connector.file.src.util.RecordAndPosition;
import org.apache.flink.core.fs.FSDataInputStream;
import org.apache.flink.core.fs.Path;
import org.apache.flink.types.Row;

/**
 * The landing directory's lines as rows (line, path): the line's bytes as written (split on
 * '\n', a trailing '\r' dropped, never decoded: bytes that are not UTF-8 reach the parser) and
 * the path of its file, for dead letters. A BulkFormat, so the reader knows its split's path;
 * the lines come from a StreamFormat, whose adapter checkpoints the position in the file.
 */
public final class LandingLines implements BulkFormat<Row, FileSourceSplit> {
    private static final long serialVersionUID = 1L;
    private static final TypeInformation<Row> TYPE = Types.ROW_NAMED(
            new String[] {"line", "path"}, Types.PRIMITIVE_ARRAY(Types.BYTE), Types.STRING);

    private final StreamFormatAdapter<byte[]> lines = new StreamFormatAdapter<>(new LineBytes());

    /**
     * The landing directory (or one file) as a FileSource of (line, path) rows, files handed out
     * in landing order (OrderedSplitAssigner); monitorMs > 0: watched for new files (processed
     * files are kept in the checkpointed source state), else read once (bounded). Flink skips
     * files whose names start with '.' or '_'.
     */
    public static FileSource<Row> source(String path, long monitorMs) {
        FileSource.FileSourceBuilder<Row> b = FileSource.forBulkFileFormat(new LandingLines(), new Path(path))
                .setSplitAssigner(new OrderedSplitAssigner.Provider());
        if (monitorMs > 0) {
            b.monitorContinuously(Duration.ofMillis(monitorMs));
        }
        return b.build();
    }

    @Override
    public BulkFormat.Reader<Row> createReader(Configuration config, FileSourceSplit split) throws IOException {
        return new WithPath(lines.createReader(config, split), split.path().getPath());
    }

    @Override
    public BulkFormat.Reader<Row> restoreReader(Configuration config, FileSourceSplit split) throws IOException {
        return new WithPath(lines.restoreReader(config, split), split.path().getPath());
    }

    @Override
    public boolean isSplittable() {
        return false;
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return TYPE;
    }

    /** A reader of lines whose records carry their file's path (positions unchanged). */
    private static final class WithPath implements BulkFormat.Reader<Row> {
        private final BulkFormat.Reader<byte[]> lines;
        private final String path;

        WithPath(BulkFormat.Reader<byte[]> lines, String path) {
            this.lines = lines;
            this.path = path;
        }

        @Override
        public BulkFormat.RecordIterator<Row> readBatch() throws IOException {
            BulkFormat.RecordIterator<byte[]> batch = lines.readBatch();
            if (batch == null) {
                return null;
            }
            MutableRecordAndPosition<Row> out = new MutableRecordAndPosition<>();
            return new BulkFormat.RecordIterator<Row>() {
                @Override
                public RecordAndPosition<Row> next() {
                    RecordAndPosition<byte[]> r = batch.next();
                    if (r == null) {
                        return null;
                    }
                    out.set(Row.of(r.getRecord(), path), r.getOffset(), r.getRecordSkipCount());
                    return out;
                }

                @Override
                public void releaseBatch() {
                    batch.releaseBatch();
                }
            };
        }

        @Override
        public void close() throws IOException {
            lines.close();
        }
    }

    /** '\n'-delimited lines as bytes; a trailing '\r' is dropped, as Flink's raw format does. */
    static final class LineBytes extends SimpleStreamFormat<byte[]> {
        private static final long serialVersionUID = 1L;

        @Override
        public StreamFormat.Reader<byte[]> createReader(Configuration config, FSDataInputStream in) {
            return new LineReader(in);
        }

        @Override
        public TypeInformation<byte[]> getProducedType() {
            return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
        }
    }

    private static final class LineReader implements StreamFormat.Reader<byte[]> {
        private final FSDataInputStream in;
        private final byte[] buf = new byte[1 << 16];
        private int pos;
        private int lim;
        private byte[] carry = new byte[256]; // the start of a line that spans reads
        private int carryLen;

        LineReader(FSDataInputStream in) {
            this.in = in;
        }

        @Override
        public byte[] read() throws IOException {
            while (true) {
                for (int i = pos; i < lim; i++) {
                    if (buf[i] == '\n') {
                        byte[] line = line(i);
                        pos = i + 1;
                        return line;
                    }
                }
                keep(); // no '\n' left: carry the partial line, read on
                int n = in.read(buf, 0, buf.length);
                if (n < 0) {
                    return carryLen == 0 ? null : line(0);
                }
                pos = 0;
                lim = n;
            }
        }

        /** The carried bytes then buf[pos, end), less a trailing '\r'; empties the carry. */
        private byte[] line(int end) {
            byte[] out;
            if (carryLen == 0) {
                out = Arrays.copyOfRange(buf, pos, end);
            } else {
                out = Arrays.copyOf(carry, carryLen + end - pos);
                System.arraycopy(buf, pos, out, carryLen, end - pos);
                carryLen = 0;
            }
            return out.length > 0 && out[out.length - 1] == '\r' ? Arrays.copyOf(out, out.length - 1) : out;
        }

        private void keep() {
            int n = lim - pos;
            if (carryLen + n > carry.length) {
                carry = Arrays.copyOf(carry, Math.max(2 * carry.length, carryLen + n));
            }
            System.arraycopy(buf, pos, carry, carryLen, n);
            carryLen += n;
            pos = lim = 0;
        }

        @Override
        public void close() throws IOException {
            in.close();
        }
    }
}
