/// Turns tokens into text one at a time, as they are generated.
///
/// A token may end in the middle of a multi-byte character (emoji and CJK often span tokens), so
/// bytes that could still become a valid character are held back until the next token completes
/// them; `feed` only ever returns whole, valid UTF-8. Bytes that can never become valid come out
/// as U+FFFD at once, and `flush` settles whatever is still held at the end.
struct StreamingDecoder: Sendable {
    let tokenizer: Tokenizer
    /// Render control tokens (such as `<|im_end|>`) as their text rather than dropping them.
    var renderSpecial: Bool
    private var pending: [UInt8] = []
    private var atStart = true

    init(tokenizer: Tokenizer, renderSpecial: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
    }

    /// The text completed by `id` (often empty while a character is incomplete).
    mutating func feed(_ id: Int32) -> String {
        tokenizer.appendPiece(of: id, renderSpecial: renderSpecial, atStart: &atStart, to: &pending)
        let end = Self.completePrefixLength(pending)
        guard end > 0 else { return "" }
        let text = String(decoding: pending[..<end], as: UTF8.self)
        pending.removeFirst(end)
        return text
    }

    /// Whatever is still held back; incomplete sequences become U+FFFD. Resets the decoder.
    mutating func flush() -> String {
        defer { reset() }
        return pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
    }

    mutating func reset() {
        pending.removeAll()
        atStart = true
    }

    /// Bytes held back waiting for the rest of a character.
    var pendingByteCount: Int { pending.count }

    /// Length of `bytes` without a trailing sequence that is a valid but unfinished character.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // The last lead byte within reach of the end (a character is at most four bytes).
        var lead = n - 1
        while lead >= 0, lead > n - 4, bytes[lead] & 0xC0 == 0x80 { lead -= 1 }
        guard lead >= 0 else { return n }
        let first = bytes[lead]
        let needed: Int
        switch first {
        case 0xC2...0xDF: needed = 2
        case 0xE0...0xEF: needed = 3
        case 0xF0...0xF4: needed = 4
        default: return n  // ASCII or a byte that never starts a character: nothing to wait for
        }
        let have = n - lead
        guard have < needed else { return n }
        // Hold only if the bytes so far can still start a valid character (no overlong forms,
        // surrogates, or code points past U+10FFFF).
        if have >= 2 {
            let second = bytes[lead + 1]
            let valid: ClosedRange<UInt8>
            switch first {
            case 0xE0: valid = 0xA0...0xBF
            case 0xED: valid = 0x80...0x9F
            case 0xF0: valid = 0x90...0xBF
            case 0xF4: valid = 0x80...0x8F
            default: valid = 0x80...0xBF
            }
            guard valid.contains(second) else { return n }
        }
        return lead
    }
}
