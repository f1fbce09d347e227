/// A stretch of input after special tokens have been cut out: ordinary text (a byte range of the
/// UTF-8 input) or one special token.
enum Fragment: Equatable {
    case text(Range<Int>)
    case token(Int32)
}

/// Cuts special tokens out of text before ordinary tokenization.
///
/// Candidates are control, user-defined and unknown tokens. User-defined tokens (Gemma's runs of
/// spaces and newlines, HTML tags) are always cut out; control and unknown ones only when the
/// caller asks to parse special tokens. Longer tokens win over shorter ones everywhere in the
/// text (not just at a given position), and each token takes its occurrences left to right;
/// this is the order llama.cpp applies, so the results match it exactly.
struct SpecialTokenSplitter: Sendable {
    /// Byte trie over candidate texts: child of (node, byte) and the candidate ending at a node.
    private let children: [Int: Int32]
    private let terminal: [Int32]
    /// Priority of each candidate (lower first), its id, and whether it is cut even when special
    /// tokens are not parsed.
    private let rank: [Int32: Int32]
    private let alwaysCut: Set<Int32>
    /// First bytes of candidates, for skipping positions quickly.
    private let startsCandidate: [Bool]

    init(vocabulary: Vocabulary) {
        var candidates: [Int32] = []
        for id in 0..<vocabulary.count where !vocabulary.attributes[id].isDisjoint(with: [.control, .userDefined, .unknown]) {
            candidates.append(Int32(id))
        }
        candidates.sort { a, b in
            let la = vocabulary.texts[Int(a)].utf8.count, lb = vocabulary.texts[Int(b)].utf8.count
            return la != lb ? la > lb : a < b
        }
        var children: [Int: Int32] = [:]
        var terminal: [Int32] = [-1]
        var rank: [Int32: Int32] = [:]
        var alwaysCut = Set<Int32>()
        var starts = [Bool](repeating: false, count: 256)
        for (position, id) in candidates.enumerated() {
            rank[id] = Int32(position)
            let attributes = vocabulary.attributes[Int(id)]
            if attributes.isDisjoint(with: [.control, .unknown]) { alwaysCut.insert(id) }
            let bytes = Array(vocabulary.texts[Int(id)].utf8)
            starts[Int(bytes[0])] = true
            var node = 0
            for byte in bytes {
                let key = node << 8 | Int(byte)
                if let next = children[key] {
                    node = Int(next)
                } else {
                    terminal.append(-1)
                    children[key] = Int32(terminal.count - 1)
                    node = terminal.count - 1
                }
            }
            terminal[node] = id
        }
        self.children = children
        self.terminal = terminal
        self.rank = rank
        self.alwaysCut = alwaysCut
        self.startsCandidate = starts
    }

    func split(_ bytes: [UInt8], parseSpecial: Bool) -> [Fragment] {
        guard !bytes.isEmpty else { return [] }
        struct Occurrence { let rank: Int32; let start: Int; let length: Int; let id: Int32 }

        // Every occurrence of every candidate that may be cut.
        var found: [Occurrence] = []
        for start in 0..<bytes.count where startsCandidate[Int(bytes[start])] {
            var node = 0
            var i = start
            while i < bytes.count, let next = children[node << 8 | Int(bytes[i])] {
                node = Int(next)
                i += 1
                let id = terminal[node]
                if id >= 0, parseSpecial || alwaysCut.contains(id) {
                    found.append(Occurrence(rank: rank[id]!, start: start, length: i - start, id: id))
                }
            }
        }
        guard !found.isEmpty else { return [.text(0..<bytes.count)] }

        // Candidates in priority order, each taking its occurrences left to right where the
        // bytes are still ordinary text.
        found.sort { $0.rank != $1.rank ? $0.rank < $1.rank : $0.start < $1.start }
        var taken = [Bool](repeating: false, count: bytes.count)
        var accepted: [Occurrence] = []
        for occurrence in found {
            let range = occurrence.start..<occurrence.start + occurrence.length
            guard !range.contains(where: { taken[$0] }) else { continue }
            for i in range { taken[i] = true }
            accepted.append(occurrence)
        }

        accepted.sort { $0.start < $1.start }
        var fragments: [Fragment] = []
        var cursor = 0
        for occurrence in accepted {
            if occurrence.start > cursor { fragments.append(.text(cursor..<occurrence.start)) }
            fragments.append(.token(occurrence.id))
            cursor = occurrence.start + occurrence.length
        }
        if cursor < bytes.count { fragments.append(.text(cursor..<bytes.count)) }
        return fragments
    }
}
