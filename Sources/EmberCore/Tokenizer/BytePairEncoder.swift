import Synchronization

/// Byte-level BPE (`tokenizer.ggml.model` = "gpt2"): each pre-tokenized word starts as one symbol
/// per byte, then the adjacent pair with the best (lowest) merge rank is merged, leftmost first,
/// until no listed merge applies.
///
/// Symbols are token ids rather than strings: a merge rule joins two tokens into a third, so
/// the table maps an id pair straight to (rank, merged id) and a merge never builds a string.
/// A heap of candidate pairs keeps each word O(n log n). Finished words are cached, since
/// natural text repeats its words constantly.
final class BytePairEncoder: Sendable {
    /// The token of each byte's single-character spelling, or -1 if the vocabulary lacks it.
    private let byteTokens: [Int32]
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    private let merges: [UInt64: UInt64]
    private let preTokenizer: PreTokenizer
    private let ids: [TokenKey: Int32]
    private let cache = Mutex<[[UInt8]: [Int32]]>([:])
    /// Bound on cached words, so a long-running process cannot grow without limit.
    private static let cacheLimit = 100_000

    init(vocabulary: Vocabulary, merges rules: [String], preTokenizer: PreTokenizer) throws {
        byteTokens = (0..<256).map { vocabulary.id(of: String(ByteLevelAlphabet.scalarForByte[$0])) ?? -1 }
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(rules.count)
        for (rank, rule) in rules.enumerated() {
            // "left right", split at the first space after the first byte (so a rule may start
            // with a literal space).
            let bytes = Array(rule.utf8)
            guard bytes.count >= 3, let space = bytes[1...].firstIndex(of: 0x20), space + 1 < bytes.count,
                  let left = vocabulary.ids[TokenKey(bytes: bytes[..<space])],
                  let right = vocabulary.ids[TokenKey(bytes: bytes[(space + 1)...])],
                  let merged = vocabulary.ids[TokenKey(bytes: bytes[..<space] + bytes[(space + 1)...])]
            else {
                throw TokenizerError.invalidMerge(index: rank, rule: rule)
            }
            let key = UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))
            // The first listing of a pair wins, as in the reference implementation.
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(UInt32(merged)) }
        }
        merges = table
        self.preTokenizer = preTokenizer
        ids = vocabulary.ids
    }

    /// Tokens of ordinary text (no special tokens in it), appended to `output`.
    func encode(_ text: ArraySlice<UInt8>, into output: inout [Int32]) {
        let string = String(decoding: text, as: UTF8.self)
        let scalars = Array(string.unicodeScalars)
        // UTF-8 offset of each scalar, to cut words out of the bytes.
        var offsets = [Int](repeating: 0, count: scalars.count + 1)
        for (i, scalar) in scalars.enumerated() { offsets[i + 1] = offsets[i] + UTF8.width(scalar) }
        let bytes = Array(text)
        for piece in preTokenizer.split(scalars) {
            encodeWord(Array(bytes[offsets[piece.lowerBound]..<offsets[piece.upperBound]]), into: &output)
        }
    }

    private func encodeWord(_ word: [UInt8], into output: inout [Int32]) {
        if let cached = cache.withLock({ $0[word] }) {
            output.append(contentsOf: cached)
            return
        }
        let tokens = merge(word)
        cache.withLock { cache in
            if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[word] = tokens
        }
        output.append(contentsOf: tokens)
    }

    private func merge(_ word: [UInt8]) -> [Int32] {
        if preTokenizer.ignoresMerges, let whole = ids[TokenKey(ByteLevelAlphabet.encode(word))] {
            return [whole]
        }
        let n = word.count
        var symbols = word.map { byteTokens[Int($0)] }
        guard n > 1 else { return symbols.filter { $0 >= 0 } }
        var next = (0..<n).map { Int32($0 + 1) }
        var prev = (0..<n).map { Int32($0 - 1) }
        next[n - 1] = -1
        var alive = [Bool](repeating: true, count: n)
        var queue = MergeQueue(capacity: 2 * n)

        func consider(_ left: Int32, _ right: Int32) {
            guard left >= 0, right >= 0 else { return }
            let l = symbols[Int(left)], r = symbols[Int(right)]
            guard l >= 0, r >= 0, let entry = merges[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))] else { return }
            let rank = entry >> 32
            queue.push(MergeCandidate(key: rank << 32 | UInt64(UInt32(left)), left: left, right: right,
                                      leftCheck: l, rightCheck: r, merged: Int32(truncatingIfNeeded: entry & 0xFFFF_FFFF)))
        }

        for i in 0..<(n - 1) { consider(Int32(i), Int32(i + 1)) }
        while let candidate = queue.pop() {
            let l = Int(candidate.left), r = Int(candidate.right)
            // Stale: one side has since been merged into something else.
            guard alive[l], alive[r], symbols[l] == candidate.leftCheck, symbols[r] == candidate.rightCheck else { continue }
            symbols[l] = candidate.merged
            alive[r] = false
            next[l] = next[r]
            if next[r] >= 0 { prev[Int(next[r])] = Int32(l) }
            consider(prev[l], Int32(l))
            consider(Int32(l), next[l])
        }

        var result: [Int32] = []
        var i: Int32 = 0
        while i >= 0 {
            // A byte the vocabulary cannot spell is dropped, as the reference implementation does.
            if symbols[Int(i)] >= 0 { result.append(symbols[Int(i)]) }
            i = next[Int(i)]
        }
        return result
    }
}
