/// Splits text into the words that byte-level BPE merges within, as the model's original
/// tokenizer does with a regular expression (named by `tokenizer.ggml.pre`).
///
/// The expressions are hand-written here as scanners over Unicode scalars, classified with
/// `Unicode.Scalar.Properties`: far faster than a regex engine, and with the exact semantics of
/// the expressions (greedy alternation, `\s+(?!\S)` backing off one space). A split is a list of
/// stages; each stage re-splits every piece the previous stage produced, keeping the text
/// between matches as pieces of its own (so nothing is ever dropped).
struct PreTokenizer: Sendable {
    enum Stage: Sendable, Equatable {
        /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
        case gpt2
        /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
        case llama3(maxDigits: Int)
        /// `\p{N}`: every number character alone.
        case singleNumbers
        /// `\p{N}+`
        case numberRuns
        /// `[\p{P}\$\+<=>\^~\|]+`
        case punctuationRuns
        /// `[\p{P}\$\+<=>\^~\|`]+` (Falcon's: the backtick too)
        case punctuationAndBacktickRuns
        /// `[0-9][0-9][0-9]`
        case asciiDigitTriples
    }

    let name: String
    let stages: [Stage]
    /// Llama 3 style: a word that is itself a token is emitted whole, without merging.
    let ignoresMerges: Bool
    /// Llama 3 files rely on BOS being added when `tokenizer.ggml.add_bos_token` is absent.
    var addsBOSByDefault: Bool { ignoresMerges }

    init(name: String?) {
        self.name = name ?? "default"
        switch name {
        case "gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "mellum", "trillion", "granite-docling", "exaone4":
            stages = [.gpt2]
            ignoresMerges = false
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b":
            // Digits are split one by one first, then the GPT-2 expression runs on what is left.
            stages = [.singleNumbers, .gpt2]
            ignoresMerges = false
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral":
            stages = [.llama3(maxDigits: 3)]
            ignoresMerges = true
        case "dbrx", "smaug-bpe":
            stages = [.llama3(maxDigits: 3)]
            ignoresMerges = false
        case "falcon":
            // Runs of punctuation first, then the GPT-2 expression, then ASCII digit triples.
            stages = [.punctuationAndBacktickRuns, .gpt2, .asciiDigitTriples]
            ignoresMerges = false
        case "qwen2", "deepseek-r1-qwen", "megrez", "stablelm2":
            stages = [.llama3(maxDigits: 1)]
            ignoresMerges = false
        default:
            // llama.cpp's fallback for files without a (known) pre-tokenizer.
            stages = [.punctuationRuns, .gpt2, .numberRuns, .asciiDigitTriples]
            ignoresMerges = false
        }
    }

    // MARK: character classes

    /// Class bits of a scalar: a letter (\p{L}), a number (\p{N}), whitespace (\s), or some other
    /// assigned character. Unassigned code points have no bits and match none of the classes.
    static let letter: UInt8 = 1, number: UInt8 = 2, space: UInt8 = 4, assigned: UInt8 = 8

    private static let asciiClasses: [UInt8] = (0..<128).map { classify(Unicode.Scalar(UInt8($0))) }

    static func classify(_ scalar: Unicode.Scalar) -> UInt8 {
        var bits: UInt8 = scalar.properties.isWhitespace ? space : 0
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            bits |= letter
        case .decimalNumber, .letterNumber, .otherNumber:
            bits |= number
        case .unassigned:
            break
        default:
            bits |= assigned
        }
        return bits == 0 ? 0 : bits | assigned
    }

    static func classOf(_ scalar: Unicode.Scalar) -> UInt8 {
        scalar.value < 128 ? asciiClasses[Int(scalar.value)] : classify(scalar)
    }

    // MARK: splitting

    /// The pieces of `scalars`, as consecutive ranges covering all of it.
    func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        guard !scalars.isEmpty else { return [] }
        let classes = scalars.map(Self.classOf)
        var pieces = [0..<scalars.count]
        for stage in stages {
            var next: [Range<Int>] = []
            next.reserveCapacity(pieces.count * 2)
            var scanner = Scanner(scalars: scalars, classes: classes)
            for piece in pieces {
                scanner.run(stage, over: piece) { next.append($0) }
            }
            pieces = next
        }
        return pieces
    }
}

/// Runs one stage over one piece. Positions outside the piece read as "nothing", so lookahead
/// never crosses into a neighbouring piece.
private struct Scanner {
    let scalars: [Unicode.Scalar]
    let classes: [UInt8]
    var low = 0, high = 0

    init(scalars: [Unicode.Scalar], classes: [UInt8]) {
        self.scalars = scalars
        self.classes = classes
    }

    private func value(_ i: Int) -> UInt32 { i >= low && i < high ? scalars[i].value : UInt32.max }
    private func cls(_ i: Int) -> UInt8 { i >= low && i < high ? classes[i] : 0 }
    private func isLetter(_ i: Int) -> Bool { cls(i) & PreTokenizer.letter != 0 }
    private func isNumber(_ i: Int) -> Bool { cls(i) & PreTokenizer.number != 0 }
    private func isSpace(_ i: Int) -> Bool { cls(i) & PreTokenizer.space != 0 }
    /// `[^\s\p{L}\p{N}]`, for an assigned character.
    private func isOther(_ i: Int) -> Bool {
        let c = cls(i)
        return c != 0 && c & (PreTokenizer.letter | PreTokenizer.number | PreTokenizer.space) == 0
    }
    private static func lower(_ v: UInt32) -> UInt32 { (65...90).contains(v) ? v + 32 : v }

    mutating func run(_ stage: PreTokenizer.Stage, over piece: Range<Int>, emit: (Range<Int>) -> Void) {
        low = piece.lowerBound
        high = piece.upperBound
        switch stage {
        case .gpt2: words(emit, llama3Digits: nil)
        case .llama3(let maxDigits): words(emit, llama3Digits: maxDigits)
        case .singleNumbers: runs(emit, single: true) { isNumber($0) }
        case .numberRuns: runs(emit, single: false) { isNumber($0) }
        case .punctuationRuns: runs(emit, single: false) { isPunctuationLike($0) }
        case .punctuationAndBacktickRuns: runs(emit, single: false) { isPunctuationLike($0) || scalars[$0] == "`" }
        case .asciiDigitTriples: digitTriples(emit)
        }
    }

    /// `\p{P}` or one of `$+<=>^~|`.
    private func isPunctuationLike(_ i: Int) -> Bool {
        let scalar = scalars[i]
        switch scalar.value {
        case 0x24, 0x2B, 0x3C, 0x3D, 0x3E, 0x5E, 0x7E, 0x7C: return true
        default: break
        }
        switch scalar.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return true
        default:
            return false
        }
    }

    /// Matches of a one-class pattern (`X` or `X+`), with the text between them kept as pieces.
    private func runs(_ emit: (Range<Int>) -> Void, single: Bool, _ matches: (Int) -> Bool) {
        var start = low
        var i = low
        while i < high {
            guard matches(i) else { i += 1; continue }
            if i > start { emit(start..<i) }
            var end = i + 1
            if !single { while end < high, matches(end) { end += 1 } }
            emit(i..<end)
            start = end
            i = end
        }
        if start < high { emit(start..<high) }
    }

    private func digitTriples(_ emit: (Range<Int>) -> Void) {
        func isDigit(_ i: Int) -> Bool { (48...57).contains(value(i)) }
        var start = low
        var i = low
        while i + 2 < high {
            if isDigit(i), isDigit(i + 1), isDigit(i + 2) {
                if i > start { emit(start..<i) }
                emit(i..<i + 3)
                i += 3
                start = i
            } else {
                i += 1
            }
        }
        if start < high { emit(start..<high) }
    }

    /// The GPT-2 expression, or (with `llama3Digits`) the Llama 3 one, whose differences are:
    /// case-insensitive contractions, one optional non-letter before a letter run, digits in
    /// groups of at most `llama3Digits`, newlines attached to punctuation, and `\s*[\r\n]+`.
    private func words(_ emit: (Range<Int>) -> Void, llama3Digits: Int?) {
        let llama3 = llama3Digits != nil
        var pos = low
        func take(_ end: Int) {
            if end > pos { emit(pos..<end) }
            pos = end
        }
        while pos < high {
            let c = value(pos)

            // Contractions: 's 't 're 've 'm 'll 'd
            if c == 0x27, pos + 1 < high {
                let n1 = llama3 ? Self.lower(value(pos + 1)) : value(pos + 1)
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {  // s t m d
                    take(pos + 2)
                    continue
                }
                if pos + 2 < high {
                    let n2 = llama3 ? Self.lower(value(pos + 2)) : value(pos + 2)
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {  // re ve ll
                        take(pos + 3)
                        continue
                    }
                }
            }

            if let maxDigits = llama3Digits {
                // [^\r\n\p{L}\p{N}]?\p{L}+
                if c != 0x0D, c != 0x0A, !isNumber(pos), isLetter(pos) || isLetter(pos + 1) {
                    var end = pos + 1
                    while isLetter(end) { end += 1 }
                    take(end)
                    continue
                }
                // \p{N}{1,maxDigits}
                if isNumber(pos) {
                    var end = pos
                    while isNumber(end) {
                        end += 1
                        if end - pos == maxDigits { take(end) }
                    }
                    take(end)
                    continue
                }
                // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
                let first = c == 0x20 ? pos + 1 : pos
                if isOther(first), cls(pos) != 0 {
                    var end = first
                    while isOther(end) { end += 1 }
                    while value(end) == 0x0D || value(end) == 0x0A { end += 1 }
                    take(end)
                    continue
                }
            } else {
                // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
                let first = c == 0x20 ? pos + 1 : pos
                let classTest: ((Int) -> Bool)?
                if isLetter(first) {
                    classTest = isLetter
                } else if isNumber(first) {
                    classTest = isNumber
                } else if isOther(first) {
                    classTest = isOther
                } else {
                    classTest = nil
                }
                if let test = classTest {
                    var end = first
                    while test(end) { end += 1 }
                    take(end)
                    continue
                }
            }

            // Whitespace runs.
            var end = pos
            var afterLastNewline = -1
            while isSpace(end) {
                if value(end) == 0x0D || value(end) == 0x0A { afterLastNewline = end + 1 }
                end += 1
            }
            let count = end - pos
            if llama3, afterLastNewline > 0 {
                take(afterLastNewline)  // \s*[\r\n]+
            } else if count > 1, end < high {
                take(end - 1)  // \s+(?!\S): leave the last space to lead the next word
            } else if count > 0 {
                take(end)  // \s+
            } else {
                take(pos + 1)  // matched nothing: the character stands alone
            }
        }
    }
}
