import Foundation

/// A language model opened from a GGUF file, with its tokenizer and chat format: what an app
/// loads once and shares. Its weights stay in the memory-mapped file; nothing here changes
/// after loading, so one model serves any number of sessions at once.
///
/// ```swift
/// let model = try Model(path: "SmolLM2-135M-Instruct.Q4_1.gguf")
/// let ids = model.tokenize("Hello")
/// ```
public final class Model: Sendable {
    /// The file it was read from.
    public let path: String
    let language: LanguageModel
    let tokenizer: Tokenizer
    let chatTemplate: ChatTemplate
    /// Whether the file carries its own activation predictors (PowerInfer's `blk.N.fc1` and
    /// `fc2`): sessions then run predictor sparsity unless told otherwise.
    let hasOwnPredictors: Bool

    /// Opens the model at `path`: a GGUF file of a supported architecture (or PowerInfer's
    /// variant of the format). Every tensor is checked for presence, shape and type, the
    /// predictors a file carries included.
    public init(path: String) throws {
        self.path = path
        let file = try GGUFFile(path: path)
        language = try LanguageModel(file: file)
        tokenizer = try Tokenizer(file: file)
        chatTemplate = ChatTemplate(for: tokenizer)
        hasOwnPredictors = file.tensors.contains { $0.name.hasPrefix("blk.") && $0.name.hasSuffix(".fc1.weight") }
        if hasOwnPredictors { try PredictorSet(file: file).check(against: language.config, path: path) }
    }

    /// The model's own name (`general.name`), else its file name.
    public var name: String {
        ((try? language.file.string("general.name")) ?? nil) ?? URL(fileURLWithPath: path).lastPathComponent
    }

    /// The `general.architecture` of the file, e.g. "llama" or "gemma3".
    public var architecture: String { language.config.architecture }
    /// The most positions a session of this model may hold (its training context).
    public var contextLength: Int { language.config.contextLength }
    public var vocabularySize: Int { language.config.vocabularySize }

    /// The token ids of `text`. `addSpecial` adds what the model puts at the start (BOS);
    /// `parseSpecial` reads special-token texts such as `<|im_start|>` as those tokens.
    public func tokenize(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int32] {
        tokenizer.encode(text, addSpecial: addSpecial, parseSpecial: parseSpecial)
    }

    /// The text of `tokens`; special tokens are left out unless `renderSpecial`.
    public func detokenize(_ tokens: [Int32], renderSpecial: Bool = false) -> String {
        tokenizer.decode(tokens, renderSpecial: renderSpecial)
    }

    /// The prompt text for `messages` in the model's chat format, ending with the opening of
    /// the assistant's turn when `addGenerationPrompt`.
    public func chatPrompt(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        chatTemplate.render(messages, addGenerationPrompt: addGenerationPrompt)
    }

    /// The tokens of a prompt, as `Session.generate` evaluates it.
    public func tokens(of prompt: Prompt) -> [Int32] {
        switch prompt {
        case .text(let text): return tokenize(text)
        case .chat(let messages): return tokenize(chatPrompt(messages))
        case .tokens(let ids): return ids
        }
    }

    /// Scans every tensor of the file for NaN and infinities (reading all its bytes: seconds
    /// for a multi-gigabyte model) and throws for the first one found, naming tensor and
    /// element. Loading checks norms and biases only. `progress(bytesDone, bytes)`.
    public func checkTensorValues(progress: (@Sendable (Int, Int) -> Void)? = nil) throws {
        try language.file.checkTensorValues { progress?($0, $1) }
    }

    /// Whether `token` ends a reply (end of sequence, end of turn).
    public func isEndOfGeneration(_ token: Int32) -> Bool { tokenizer.isEndOfGeneration(token) }

    /// The tokens of a text corpus by the rule perplexity, profiling and predictor training
    /// share: no BOS, special-token texts read as plain text.
    public func corpusTokens(_ text: String) -> [Int32] {
        tokenizer.encode(text, addSpecial: false, parseSpecial: false)
    }
}

/// What a generation starts from.
public enum Prompt: Sendable, Equatable {
    /// Plain text, tokenized with BOS and special-token texts parsed.
    case text(String)
    /// A conversation in the model's chat format, ending with the assistant's turn opened.
    case chat([ChatMessage])
    /// Token ids as they are.
    case tokens([Int32])
}

extension Model {
    /// What a fast device with `budget` bytes should hold of this model (dense blocks, then the
    /// hottest FFN neurons by the statistics at `statisticsPath`), solved exactly; the device's
    /// working buffers are reserved first, as in hybrid runs, so a placement written from this
    /// report is the one runs with the same budget pick up.
    public func place(statisticsPath: String, budget: Int, options: PlacementOptions = PlacementOptions()) throws -> PlacementReport {
        var options = options
        options.reservedBytes = min(budget, deviceWorkingBytes(denseCapacity: options.placesDenseBlocks ? options.kvCacheTokens : nil))
        return try Placement.solve(model: language, modelPath: path, statisticsPath: statisticsPath, budget: budget, options: options)
    }

    /// Device bytes a hybrid run's working buffers take beside the weights: the FFN's, and the
    /// dense operations' for a cache of `denseCapacity` positions when the device runs them.
    func deviceWorkingBytes(denseCapacity: Int?) -> Int {
        DeviceFeedForward.workingBytes(language.config)
            + (denseCapacity.map { DeviceDenseBlocks.workingBytes(language.config, capacity: $0) } ?? 0)
    }
}
