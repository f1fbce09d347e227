/// Text ↔ token ids for a model, built from the `tokenizer.*` metadata of its GGUF file.
///
/// Two tokenizer kinds are supported: byte-level BPE (`gpt2`: GPT-2, SmolLM, Llama 3, Qwen 2)
/// and SentencePiece-style BPE (`llama`: Llama 2, Gemma). Both give the same ids as llama.cpp.
/// The object is immutable apart from an internal, locked word cache, so one tokenizer can serve
/// many threads.
final class Tokenizer: Sendable {
    enum Kind: String, Sendable {
        /// Byte-level BPE over pre-tokenized words (`tokenizer.ggml.model` = "gpt2").
        case bytePairEncoding = "gpt2"
        /// SentencePiece-style score-merging BPE with byte fallback (`tokenizer.ggml.model` = "llama").
        case sentencePiece = "llama"
    }

    let kind: Kind
    /// `tokenizer.ggml.pre` as used (byte-level BPE only; "default" when absent).
    let preTokenizerName: String?
    /// Whether `encode(_:addSpecial:parseSpecial:)` with `addSpecial` adds BOS / EOS.
    let addsBOS: Bool
    let addsEOS: Bool
    /// SentencePiece: whether a space is put before text that starts the input or follows a
    /// special token.
    let addsSpacePrefix: Bool
    /// The model's Jinja chat template (`tokenizer.chat_template`), if it has one.
    let chatTemplateSource: String?
    /// `general.architecture`, used to pick a chat format when there is no template.
    let architecture: String?

    let vocabulary: Vocabulary
    private let splitter: SpecialTokenSplitter
    private let bytePairEncoder: BytePairEncoder?
    private let sentencePieceEncoder: SentencePieceEncoder?
    /// The raw bytes of every token, precomputed: decoding is a lookup.
    private let pieces: [[UInt8]]

    convenience init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    init(file: GGUFFile) throws {
        let reader = MetadataReader(file: file)
        guard let model = try reader.string("tokenizer.ggml.model") else {
            throw TokenizerError.missingMetadata(key: "tokenizer.ggml.model")
        }
        guard let kind = Kind(rawValue: model) else { throw TokenizerError.unsupportedModel(model) }
        self.kind = kind
        let vocabulary = try Vocabulary(file: file)
        self.vocabulary = vocabulary
        chatTemplateSource = try reader.string("tokenizer.chat_template")
        architecture = try reader.string("general.architecture")

        let addBOSDefault: Bool
        switch kind {
        case .bytePairEncoding:
            guard let merges = try reader.stringArray("tokenizer.ggml.merges") else {
                throw TokenizerError.missingMetadata(key: "tokenizer.ggml.merges")
            }
            let pre = try reader.string("tokenizer.ggml.pre")
            let preTokenizer = PreTokenizer(name: pre)
            preTokenizerName = preTokenizer.name
            bytePairEncoder = try BytePairEncoder(vocabulary: vocabulary, merges: merges, preTokenizer: preTokenizer)
            sentencePieceEncoder = nil
            addBOSDefault = preTokenizer.addsBOSByDefault
            addsSpacePrefix = false
        case .sentencePiece:
            preTokenizerName = nil
            bytePairEncoder = nil
            sentencePieceEncoder = SentencePieceEncoder(vocabulary: vocabulary)
            addBOSDefault = true
            addsSpacePrefix = try reader.bool("tokenizer.ggml.add_space_prefix") ?? true
        }
        addsBOS = try reader.bool("tokenizer.ggml.add_bos_token") ?? addBOSDefault
        addsEOS = try reader.bool("tokenizer.ggml.add_eos_token") ?? false
        if addsBOS, vocabulary.bos == nil {
            throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.add_bos_token", reason: "true, but there is no BOS token id")
        }
        if addsEOS, vocabulary.eos == nil {
            throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.add_eos_token", reason: "true, but there is no EOS token id")
        }
        splitter = SpecialTokenSplitter(vocabulary: vocabulary)
        pieces = (0..<vocabulary.count).map { Self.piece(of: $0, in: vocabulary, kind: kind) }
    }

    // MARK: vocabulary

    var vocabularySize: Int { vocabulary.count }
    var bos: Int32? { vocabulary.bos }
    var eos: Int32? { vocabulary.eos }
    var unknown: Int32? { vocabulary.unknown }
    var padding: Int32? { vocabulary.padding }
    /// Every id that ends generation: EOS, EOT, and turn/document enders such as `<|im_end|>`,
    /// `<end_of_turn>` and `<|endoftext|>`.
    var endOfGenerationIDs: Set<Int32> { vocabulary.endOfGeneration }

    func isEndOfGeneration(_ id: Int32) -> Bool { vocabulary.endOfGeneration.contains(id) }

    /// The vocabulary entry's text as stored (byte-level or "▁" spelling), nil for a bad id.
    func tokenText(_ id: Int32) -> String? { vocabulary.isValid(id) ? vocabulary.texts[Int(id)] : nil }

    func attributes(of id: Int32) -> TokenAttributes { vocabulary.isValid(id) ? vocabulary.attributes[Int(id)] : [] }

    /// The id of an exact vocabulary entry.
    func id(of tokenText: String) -> Int32? { vocabulary.id(of: tokenText) }

    /// Control or unknown tokens: the ones `decode` leaves out unless asked to render them.
    func isControl(_ id: Int32) -> Bool { !attributes(of: id).isDisjoint(with: [.control, .unknown]) }

    // MARK: encoding

    /// Token ids of `text`.
    /// - Parameters:
    ///   - addSpecial: add BOS (and EOS) where the model's metadata asks for them.
    ///   - parseSpecial: text spelling a control token (such as `<|im_start|>`) becomes that token;
    ///     otherwise it is tokenized as ordinary text. User-defined tokens are always recognised.
    func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int32] {
        let bytes = Array(text.utf8)
        var output: [Int32] = []
        output.reserveCapacity(bytes.count / 3 + 2)
        if addSpecial, addsBOS, let bos = vocabulary.bos { output.append(bos) }

        var previousWasSpecial = true  // the start of input counts, for the SentencePiece space prefix
        for fragment in splitter.split(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id):
                output.append(id)
                previousWasSpecial = true
            case .text(let range):
                if let encoder = bytePairEncoder {
                    encoder.encode(bytes[range], into: &output)
                } else if let encoder = sentencePieceEncoder {
                    encoder.encode(Self.escapeSpaces(bytes[range], prefix: addsSpacePrefix && previousWasSpecial), into: &output)
                }
                previousWasSpecial = false
            }
        }

        if addSpecial, addsEOS, let eos = vocabulary.eos { output.append(eos) }
        return output
    }

    /// SentencePiece writes spaces as "▁" (U+2581).
    private static func escapeSpaces(_ bytes: ArraySlice<UInt8>, prefix: Bool) -> [UInt8] {
        let mark: [UInt8] = [0xE2, 0x96, 0x81]
        var out: [UInt8] = prefix ? mark : []
        out.reserveCapacity(bytes.count + 16)
        for byte in bytes {
            if byte == 0x20 { out.append(contentsOf: mark) } else { out.append(byte) }
        }
        return out
    }

    // MARK: decoding

    /// The raw bytes a token stands for: byte-level spelling undone, "▁" turned back into a space,
    /// `<0xNN>` into its byte; control and user-defined tokens give their text. Empty for a bad id.
    func tokenBytes(_ id: Int32) -> [UInt8] { vocabulary.isValid(id) ? pieces[Int(id)] : [] }

    /// The bytes of `ids` joined. Control and unknown tokens are left out unless `renderSpecial`.
    func decodeBytes(_ ids: [Int32], renderSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        var atStart = true
        for id in ids { appendPiece(of: id, renderSpecial: renderSpecial, atStart: &atStart, to: &out) }
        return out
    }

    /// Appends one token's bytes. `atStart` is true until the first text is written: the space
    /// SentencePiece put before the text is not part of it, so it is dropped there.
    func appendPiece(of id: Int32, renderSpecial: Bool, atStart: inout Bool, to out: inout [UInt8]) {
        guard vocabulary.isValid(id), renderSpecial || !isControl(id) else { return }
        var piece = pieces[Int(id)][...]
        if atStart, addsSpacePrefix, piece.first == 0x20 { piece = piece.dropFirst() }
        if !piece.isEmpty { atStart = false }
        out.append(contentsOf: piece)
    }

    /// Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD.
    func decode(_ ids: [Int32], renderSpecial: Bool = false) -> String {
        String(decoding: decodeBytes(ids, renderSpecial: renderSpecial), as: UTF8.self)
    }

    /// "▁" (E2 96 81) back to a space.
    private static func unescapeSpaces(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if i + 2 < bytes.count, bytes[i] == 0xE2, bytes[i + 1] == 0x96, bytes[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return out
    }

    private static func piece(of id: Int, in vocabulary: Vocabulary, kind: Kind) -> [UInt8] {
        let text = vocabulary.texts[id]
        let attributes = vocabulary.attributes[id]
        if !attributes.isDisjoint(with: [.control, .unknown, .userDefined]) { return Array(text.utf8) }
        if attributes.contains(.normal) {
            switch kind {
            case .bytePairEncoding: return ByteLevelAlphabet.decode(text)
            case .sentencePiece: return unescapeSpaces(Array(text.utf8))
            }
        }
        if attributes.contains(.byte) {
            // "<0xNN>"
            let utf8 = Array(text.utf8)
            if utf8.count == 6, let value = UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16) {
                return [value]
            }
        }
        return []
    }
}
