/// How a vocabulary entry behaves, from `tokenizer.ggml.token_type` (plus the adjustments
/// llama.cpp makes by token text, so Ember tokenizes the same way).
struct TokenAttributes: OptionSet, Sendable, Hashable {
    let rawValue: UInt8
    init(rawValue: UInt8) { self.rawValue = rawValue }

    static let normal = TokenAttributes(rawValue: 1 << 0)
    static let unknown = TokenAttributes(rawValue: 1 << 1)
    static let control = TokenAttributes(rawValue: 1 << 2)
    static let userDefined = TokenAttributes(rawValue: 1 << 3)
    static let unused = TokenAttributes(rawValue: 1 << 4)
    static let byte = TokenAttributes(rawValue: 1 << 5)

    /// The GGUF token type codes: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    init(ggufType: Int) {
        switch ggufType {
        case 1: self = .normal
        case 2: self = .unknown
        case 3: self = .control
        case 4: self = .userDefined
        case 5: self = .unused
        case 6: self = .byte
        default: self = []
        }
    }
}

/// The token table shared by both tokenizer kinds: texts, attributes, scores, the reverse map and
/// the special ids.
struct Vocabulary: Sendable {
    let texts: [String]
    let attributes: [TokenAttributes]
    let scores: [Float]
    let ids: [TokenKey: Int32]
    let bos: Int32?
    let eos: Int32?
    let unknown: Int32?
    let padding: Int32?
    let endOfGeneration: Set<Int32>

    var count: Int { texts.count }

    /// Texts that mark the end of a turn or of generation in common chat formats; llama.cpp stops on
    /// these (and forces them to be control tokens) whatever the metadata says.
    static let endOfGenerationTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    ]
    /// Fill-in-the-middle padding, repository and file-separator tokens: also end generation.
    static let fillInMiddleStopTexts: Set<String> = [
        "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
        "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
        "<|file_sep|>",
    ]

    init(file: GGUFFile) throws {
        let reader = MetadataReader(file: file)
        guard var texts = try reader.stringArray("tokenizer.ggml.tokens") else {
            throw TokenizerError.missingMetadata(key: "tokenizer.ggml.tokens")
        }
        guard !texts.isEmpty else {
            throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.tokens", reason: "the vocabulary is empty")
        }
        guard texts.count < Int(Int32.max) else {
            throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.tokens", reason: "too many tokens")
        }
        let n = texts.count

        var attributes = [TokenAttributes](repeating: .normal, count: n)
        if let types = try reader.intArray("tokenizer.ggml.token_type") {
            guard types.count >= n else {
                throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.token_type",
                                                     reason: "\(types.count) entries for \(n) tokens")
            }
            for i in 0..<n { attributes[i] = TokenAttributes(ggufType: types[i]) }
        }

        var scores = [Float](repeating: 0, count: n)
        if let values = try reader.floatArray("tokenizer.ggml.scores") {
            guard values.count >= n else {
                throw TokenizerError.invalidMetadata(key: "tokenizer.ggml.scores",
                                                     reason: "\(values.count) entries for \(n) tokens")
            }
            scores = Array(values[0..<n])
        }

        var ids: [TokenKey: Int32] = [:]
        ids.reserveCapacity(n)
        for i in 0..<n {
            // An empty entry could never be matched; llama.cpp renames it the same way.
            if texts[i].isEmpty { texts[i] = "[EMPTY_\(i)]" }
            if let previous = ids.updateValue(Int32(i), forKey: TokenKey(texts[i])) {
                throw TokenizerError.duplicateToken(text: texts[i], firstID: Int(previous), secondID: i)
            }
        }

        func specialID(_ key: String) throws -> Int32? {
            guard let id = try reader.int(key) else { return nil }
            guard id >= 0, id < n else { throw TokenizerError.tokenIDOutOfRange(key: key, id: id, vocabularySize: n) }
            return Int32(id)
        }
        bos = try specialID("tokenizer.ggml.bos_token_id")
        eos = try specialID("tokenizer.ggml.eos_token_id")
        unknown = try specialID("tokenizer.ggml.unknown_token_id")
        padding = try specialID("tokenizer.ggml.padding_token_id")
        let eot = try specialID("tokenizer.ggml.eot_token_id")
        let eom = try specialID("tokenizer.ggml.eom_token_id")

        // End of generation: EOS, EOT, EOM, and tokens recognised by their text.
        var stop = Set<Int32>([eos, eot, eom].compactMap { $0 })
        for text in Self.endOfGenerationTexts.union(Self.fillInMiddleStopTexts) {
            guard let id = ids[TokenKey(text)] else { continue }
            stop.insert(id)
            attributes[Int(id)].insert(.control)
        }
        endOfGeneration = stop

        self.texts = texts
        self.attributes = attributes
        self.scores = scores
        self.ids = ids
    }

    func id(of text: String) -> Int32? { ids[TokenKey(text)] }

    func isValid(_ id: Int32) -> Bool { id >= 0 && Int(id) < texts.count }
}

/// Reads `GGUFFile` metadata, turning type errors into `TokenizerError` so callers see one error type.
struct MetadataReader {
    let file: GGUFFile

    private func wrap<T>(_ key: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as GGUFError {
            throw TokenizerError.invalidMetadata(key: key, reason: error.description)
        }
    }

    func string(_ key: String) throws -> String? { try wrap(key) { try file.string(key) } }
    func int(_ key: String) throws -> Int? { try wrap(key) { try file.int(key) } }
    /// A flag; some converters write flags as integers, which are accepted too.
    func bool(_ key: String) throws -> Bool? {
        guard let value = file.value(key) else { return nil }
        guard let number = value.intValue else {
            throw TokenizerError.invalidMetadata(key: key, reason: "expected a bool, found \(value.type)")
        }
        return number != 0
    }
    func stringArray(_ key: String) throws -> [String]? { try wrap(key) { try file.stringArray(key) } }
    func intArray(_ key: String) throws -> [Int]? { try wrap(key) { try file.intArray(key) } }
    func floatArray(_ key: String) throws -> [Float]? { try wrap(key) { try file.floatArray(key) } }
}
