import EmberCore
import Foundation

/// A model and its tokenizer, opened from `--model` or the default model.
struct LoadedModel {
    let path: String
    let model: LanguageModel
    let tokenizer: Tokenizer

    init(_ arguments: Arguments) throws {
        if let path = arguments.string("--model") {
            guard FileManager.default.fileExists(atPath: path) else { throw UsageError("no model file at \(path)") }
            self.path = path
        } else {
            path = try ModelStore.ensure(KnownModel.defaultModel) { Terminal.note("ember: \($0)") }
        }
        let file = try GGUFFile(path: path)
        model = try LanguageModel(file: file)
        tokenizer = try Tokenizer(file: file)
    }

    func session(_ arguments: Arguments, minimumContext: Int = 1) throws -> Session {
        let threads = try arguments.int("--threads", default: ProcessInfo.processInfo.activeProcessorCount, range: 1...256)
        let fallback = min(model.config.contextLength, max(2048, minimumContext))
        let context = try arguments.int("--ctx", default: fallback, range: 1...1 << 20)
        let batch = try arguments.int("--batch", default: 64, range: 1...4096)
        guard context <= model.config.contextLength else {
            throw UsageError("--ctx \(context) exceeds the model's context length \(model.config.contextLength)")
        }
        return Session(model: model, threads: threads, contextLength: context, batchSize: batch)
    }
}

/// The sampling flags shared by run and chat.
enum SamplingFlags {
    static let all: [Arguments.Flag] = [
        .init(names: ["--temp"], takesValue: true, help: "temperature; 0 is greedy (default 0.8)"),
        .init(names: ["--top-k"], takesValue: true, help: "keep the k likeliest tokens, 0 = all (default 40)"),
        .init(names: ["--top-p"], takesValue: true, help: "keep the smallest set with this total probability (default 0.95)"),
        .init(names: ["--min-p"], takesValue: true, help: "drop tokens below this share of the likeliest (default 0.05)"),
        .init(names: ["--repeat-penalty"], takesValue: true, help: "penalty for recent tokens, 1 = off (default 1.0)"),
        .init(names: ["--repeat-last-n"], takesValue: true, help: "how many recent tokens the penalty sees (default 64)"),
        .init(names: ["--seed"], takesValue: true, help: "random seed, for repeatable sampling"),
    ]

    static func settings(_ arguments: Arguments) throws -> SamplerSettings {
        var settings = SamplerSettings()
        settings.temperature = try arguments.float("--temp", default: settings.temperature, range: 0...100)
        settings.topK = try arguments.int("--top-k", default: settings.topK, range: 0...1 << 24)
        settings.topP = try arguments.float("--top-p", default: settings.topP, range: 0...1)
        settings.minP = try arguments.float("--min-p", default: settings.minP, range: 0...1)
        settings.repeatPenalty = try arguments.float("--repeat-penalty", default: settings.repeatPenalty, range: 0.01...100)
        settings.repeatLastN = try arguments.int("--repeat-last-n", default: settings.repeatLastN, range: -1...1 << 20)
        if let seed = arguments.string("--seed") {
            guard let value = UInt64(seed) else { throw UsageError("--seed must be a non-negative integer, not \"\(seed)\"") }
            settings.seed = value
        }
        return settings
    }
}

func timingsLine(_ statistics: GenerationStatistics) -> String {
    String(format: "[prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.1f tokens/s | %@]",
           statistics.promptTokens, statistics.promptTokensPerSecond, statistics.generatedTokens,
           statistics.decodeTokensPerSecond, statistics.stopReason.rawValue)
}
