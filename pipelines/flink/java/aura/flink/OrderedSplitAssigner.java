package aura.flink;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.List;
import java.util.Optional;
import java.util.PriorityQueue;

import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.assigners.FileSplitAssigner;

/**
 * Hands out the landing directory's files in landing order: (modification time, path, offset),
 * as Beam's landing source reads them, whichever order they were found or restored in. Files
 * found in one monitoring round, in later rounds, added back after a failure or restored from a
 * checkpoint all wait in one queue in that order (Flink's default assigner hands out a batch in
 * reverse listing order). No locality: a landing directory is read by one reader.
 */
public final class OrderedSplitAssigner implements FileSplitAssigner {
    static final Comparator<FileSourceSplit> LANDING_ORDER =
            Comparator.comparingLong(FileSourceSplit::fileModificationTime)
                    .thenComparing(s -> s.path().toString())
                    .thenComparingLong(FileSourceSplit::offset);

    private final PriorityQueue<FileSourceSplit> queue = new PriorityQueue<>(LANDING_ORDER);

    public OrderedSplitAssigner(Collection<FileSourceSplit> splits) {
        queue.addAll(splits);
    }

    @Override
    public Optional<FileSourceSplit> getNext(String hostname) {
        return Optional.ofNullable(queue.poll());
    }

    @Override
    public void addSplits(Collection<FileSourceSplit> splits) {
        queue.addAll(splits);
    }

    /** The files not handed out yet, in landing order (the enumerator's checkpoint). */
    @Override
    public Collection<FileSourceSplit> remainingSplits() {
        List<FileSourceSplit> out = new ArrayList<>(queue);
        out.sort(LANDING_ORDER);
        return out;
    }

    /** FileSource.setSplitAssigner's factory (also called with the splits of a restored checkpoint). */
    public static final class Provider implements FileSplitAssigner.Provider {
        private static final long serialVersionUID = 1L;

        @Override
        public FileSplitAssigner create(Collection<FileSourceSplit> initialSplits) {
            return new OrderedSplitAssigner(initialSplits);
        }
    }
}
