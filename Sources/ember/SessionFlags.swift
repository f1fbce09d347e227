import EmberCore
import EmberDownload
import Foundation

/// The flags that choose the model and build its session, turned into `SessionOptions`.
enum SessionFlags {
    static let sparsity: [Arguments.Flag] = [
        .init(names: ["--sparsity"], takesValue: true,
              help: "dense | exact | threshold[:S] | down[:S] | predictor (default: dense; predictor when the model ships predictors)"),
        .init(names: ["--stats"], takesValue: true, help: "activation statistics from `ember profile` (default: MODEL.stats.gguf beside the model)"),
        .init(names: ["--predictor"], takesValue: true, help: "predictors from `ember train-predictor` (default: MODEL.predictor.gguf beside the model)"),
        .init(names: ["--vram-budget"], takesValue: true,
              help: "hybrid: the OpenCL device holds attention, the output head and the hottest FFN neurons in this much memory "
                + "(e.g. 2GiB) and computes them beside the CPU; needs --sparsity predictor and statistics"),
        .init(names: ["--placement"], takesValue: true,
              help: "placement from `ember place` for --vram-budget (default: MODEL.placement.gguf; solved anew when made for other settings)"),
        .init(names: ["--cache-type"], takesValue: true,
              help: "how the KV cache stores keys and values: f16 | f32 (twice the memory) | q8_0 (about half of f16's; head "
                + "sizes multiples of 32) (default: f16)"),
    ] + DeviceFlags.all

    /// The model `--model` names, else the default model (downloaded once); with
    /// `--check-tensors`, every weight scanned for NaN and infinities first.
    static func model(_ arguments: Arguments) throws -> Model {
        let model: Model
        if let path = arguments.string("--model") {
            guard FileManager.default.fileExists(atPath: path) else { throw UsageError("no model file at \(path)") }
            model = try Model(path: path)
        } else {
            model = try Model(path: try ModelStore.ensure(KnownModel.defaultModel) { Terminal.note("ember: \($0)") })
        }
        if arguments.has("--check-tensors") {
            let progress = Progress("checking tensors")
            try model.checkTensorValues { progress.update($0 >> 20, of: $1 >> 20, detail: "MiB") }
            progress.finish()
        }
        return model
    }

    /// The options the flags ask for; `context` is the context length when `--ctx` is not given.
    static func options(_ arguments: Arguments, context: Int? = nil) throws -> SessionOptions {
        var options = SessionOptions()
        options.threads = try arguments.threads()
        if arguments.has("--ctx") {
            options.contextLength = try arguments.int("--ctx", default: 0, range: 1...1 << 24)
        } else {
            options.contextLength = context
        }
        options.batchSize = try arguments.int("--batch", default: 64, range: 1...4096)
        if let text = arguments.string("--cache-type") {
            guard let type = KVCacheType(rawValue: text) else {
                throw UsageError("--cache-type must be " + KVCacheType.allCases.map(\.rawValue).joined(separator: ", ") + ", not \"\(text)\"")
            }
            options.kvCacheType = type
        }
        if let text = arguments.string("--sparsity") {
            guard let mode = SparsityMode(text) else {
                throw UsageError("--sparsity must be dense, exact, threshold[:S], down[:S] or predictor (0 < S < 1), not \"\(text)\"")
            }
            options.sparsity = mode
        }
        options.statisticsPath = arguments.string("--stats")
        options.predictorPath = arguments.string("--predictor")
        options.deviceMemoryBudget = try arguments.vramBudget()
        options.placementPath = arguments.string("--placement")
        options.device = try arguments.deviceChoice()
        options.openCLLibraryPath = arguments.openCLLibraryPath()
        return options
    }

    /// The session of `model` the flags ask for, its notes printed on stderr.
    static func session(_ arguments: Arguments, model: Model, context: Int? = nil) throws -> Session {
        let session: Session
        do {
            session = try Session(model: model, options: try options(arguments, context: context))
        } catch SparseExecutionError.hybridNeedsPredictor {
            throw UsageError("--vram-budget needs --sparsity predictor (or predictors beside the model): the active set must be known "
                             + "before the devices start")
        }
        for note in session.notes { Terminal.note("ember: " + note) }
        return session
    }

    /// The default context of a run needing `needed` positions: 2048, or more when needed, at
    /// most the model's.
    static func context(for model: Model, needing needed: Int) -> Int {
        min(model.contextLength, max(2048, needed))
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
        settings.seed = try arguments.seed()
        return settings
    }
}

func timingsLine(_ statistics: GenerationStatistics) -> String {
    String(format: "[prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.1f tokens/s | %@]",
           statistics.promptTokens, statistics.promptTokensPerSecond, statistics.generatedTokens,
           statistics.decodeTokensPerSecond, statistics.stopReason.rawValue)
}
