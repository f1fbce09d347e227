/// SentencePiece-style BPE (`tokenizer.ggml.model` = "llama", as in Llama 2 and Gemma): the whole
/// text (spaces already written as "▁") starts as one symbol per character; the adjacent pair
/// whose concatenation is the vocabulary entry with the highest score is merged, leftmost first,
/// until no pair forms an entry. A final symbol that is not a token falls back to one `<0xNN>`
/// token per byte.
struct SentencePieceEncoder: Sendable {
    private let ids: [TokenKey: Int32]
    private let scores: [Float]
    /// `<0xNN>` token for each byte (else the byte's own one-character token, else unknown, else -1).
    private let byteTokens: [Int32]

    init(vocabulary: Vocabulary) {
        ids = vocabulary.ids
        scores = vocabulary.scores
        byteTokens = (0..<256).map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            let name = "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
            if let id = vocabulary.id(of: name) { return id }
            if byte < 0x80, let id = vocabulary.id(of: String(Unicode.Scalar(UInt8(byte)))) { return id }
            return vocabulary.unknown ?? -1
        }
    }

    /// Heap key: higher scores first. Float bits made order-preserving as unsigned, then inverted.
    private static func priority(_ score: Float) -> UInt64 {
        let bits = score.bitPattern
        let ascending = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
        return UInt64(~ascending)
    }

    /// Byte length of the UTF-8 sequence a lead byte starts (continuation bytes count as one).
    private static func sequenceLength(_ lead: UInt8) -> Int {
        switch lead >> 4 {
        case 0xC, 0xD: return 2
        case 0xE: return 3
        case 0xF: return 4
        default: return 1
        }
    }

    /// Tokens of `text` (UTF-8, spaces already escaped), appended to `output`.
    func encode(_ text: [UInt8], into output: inout [Int32]) {
        guard !text.isEmpty else { return }
        var start: [Int] = []
        var length: [Int] = []
        var offset = 0
        while offset < text.count {
            let n = min(Self.sequenceLength(text[offset]), text.count - offset)
            start.append(offset)
            length.append(n)
            offset += n
        }
        let count = start.count
        var next = (0..<count).map { $0 + 1 }
        var prev = (0..<count).map { $0 - 1 }
        next[count - 1] = -1
        var queue = MergeQueue(capacity: 2 * count)

        text.withUnsafeBufferPointer { buffer in
            func lookup(_ from: Int, _ byteCount: Int) -> Int32? {
                ids[TokenKey(bytes: UnsafeBufferPointer(rebasing: buffer[from..<from + byteCount]))]
            }
            func consider(_ left: Int, _ right: Int) {
                guard left >= 0, right >= 0 else { return }
                let size = length[left] + length[right]
                guard let id = lookup(start[left], size) else { return }
                queue.push(MergeCandidate(key: Self.priority(scores[Int(id)]) << 32 | UInt64(left),
                                          left: Int32(left), right: Int32(right),
                                          leftCheck: Int32(size), rightCheck: 0, merged: id))
            }

            for i in 1..<max(count, 1) { consider(i - 1, i) }
            while let candidate = queue.pop() {
                let l = Int(candidate.left), r = Int(candidate.right)
                // Stale: a side was merged away, or grew since the candidate was made.
                guard length[l] > 0, length[r] > 0, length[l] + length[r] == Int(candidate.leftCheck) else { continue }
                length[l] += length[r]
                length[r] = 0
                next[l] = next[r]
                if next[r] >= 0 { prev[next[r]] = l }
                consider(prev[l], l)
                consider(l, next[l])
            }

            var i = 0
            while i >= 0 {
                if let id = lookup(start[i], length[i]) {
                    output.append(id)
                } else {
                    for byte in buffer[start[i]..<start[i] + length[i]] where byteTokens[Int(byte)] >= 0 {
                        output.append(byteTokens[Int(byte)])
                    }
                }
                i = next[i]
            }
        }
    }
}
