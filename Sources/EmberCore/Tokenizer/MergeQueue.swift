/// A candidate merge of two adjacent symbols, ordered by `key` (smallest first). Both encoders
/// pack their priority into the high 32 bits and the left symbol's index into the low 32, so ties
/// go to the leftmost pair.
struct MergeCandidate {
    var key: UInt64
    var left: Int32
    var right: Int32
    /// The ids expected on each side (byte-level BPE) or the merged byte length (SentencePiece):
    /// how a candidate made stale by an earlier merge is recognised.
    var leftCheck: Int32
    var rightCheck: Int32
    var merged: Int32
}

/// Binary min-heap of merge candidates.
struct MergeQueue {
    private var items: [MergeCandidate] = []

    init(capacity: Int) { items.reserveCapacity(capacity) }

    var isEmpty: Bool { items.isEmpty }

    mutating func push(_ item: MergeCandidate) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].key < items[parent].key else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> MergeCandidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        guard !items.isEmpty else { return top }
        items[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count, items[left].key < items[smallest].key { smallest = left }
            if right < items.count, items[right].key < items[smallest].key { smallest = right }
            if smallest == parent { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
