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

    /// The model's own name, else its file name.
    var name: String {
        ((try? model.file.string("general.name")) ?? nil) ?? URL(fileURLWithPath: path).lastPathComponent
    }

    /// A corpus's tokens by the rule the reference perplexity uses, which profiling and
    /// predictor training follow too: no BOS, special tokens as plain text.
    func corpusTokens(_ text: String) -> [Int32] {
        tokenizer.encode(text, addSpecial: false, parseSpecial: false)
    }

    /// A session with the flags' threads, context (default: 2048 or `minimumContext`, or
    /// exactly `minimumContext` when `exactContext`) and sparsity.
    func session(_ arguments: Arguments, minimumContext: Int = 1, exactContext: Bool = false) throws -> Session {
        let threads = try arguments.threads()
        let fallback = min(model.config.contextLength, exactContext ? minimumContext : max(2048, minimumContext))
        let context = try arguments.int("--ctx", default: fallback, range: 1...1 << 20)
        let batch = try arguments.int("--batch", default: 64, range: 1...4096)
        guard context <= model.config.contextLength else {
            throw UsageError("--ctx \(context) exceeds the model's context length \(model.config.contextLength)")
        }
        let session = Session(model: model, threads: threads, contextLength: context, batchSize: batch)
        if let sparsity = try SparsityFlags.execution(arguments, model: model, modelPath: path, pool: session.pool,
                                                      contextLength: context) {
            session.pass.sparsity = sparsity
            if let hybrid = sparsity.hybridPlacement, !hybrid.attentionLayers.isEmpty || hybrid.outputHead {
                session.pass.denseOffload = try DeviceDenseBlocks(device: hybrid.device, model: model, layers: hybrid.attentionLayers,
                                                                  outputHead: hybrid.outputHead, capacity: context)
            }
        }
        return session
    }
}

/// The sparsity flags shared by run, bench and perplexity.
enum SparsityFlags {
    static let all: [Arguments.Flag] = [
        .init(names: ["--sparsity"], takesValue: true,
              help: "dense | exact | threshold[:S] | down[:S] | predictor (default: dense; predictor when the model ships predictors)"),
        .init(names: ["--stats"], takesValue: true, help: "activation statistics from `ember profile` (default: MODEL.stats.gguf beside the model)"),
        .init(names: ["--predictor"], takesValue: true, help: "predictors from `ember train-predictor` (default: MODEL.predictor.gguf beside the model)"),
        .init(names: ["--vram-budget"], takesValue: true,
              help: "hybrid: the OpenCL device holds the hottest FFN neurons in this much memory (e.g. 2GiB) and computes them "
                + "beside the CPU; needs --sparsity predictor and statistics (placement: MODEL.placement.gguf, else solved)"),
        .init(names: ["--placement"], takesValue: true,
              help: "placement from `ember place` for --vram-budget (default: MODEL.placement.gguf; solved anew when made for other settings)"),
    ] + DeviceFlags.all

    /// A file beside the model: MODEL.gguf → MODEL.<suffix>.gguf.
    static func companion(of modelPath: String, _ suffix: String) -> String {
        let base = modelPath.hasSuffix(".gguf") ? String(modelPath.dropLast(5)) : modelPath
        return base + "." + suffix + ".gguf"
    }

    /// The sparse FFN the flags ask for, or nil for dense.
    static func execution(_ arguments: Arguments, model: LanguageModel, modelPath: String, pool: ThreadPool,
                          contextLength: Int) throws -> SparseExecution? {
        let statsPath = arguments.string("--stats") ?? companion(of: modelPath, "stats")
        let predictorPath = arguments.string("--predictor") ?? companion(of: modelPath, "predictor")
        let shipsPredictors = FileManager.default.fileExists(atPath: statsPath) && FileManager.default.fileExists(atPath: predictorPath)
        let mode: SparsityMode
        if let text = arguments.string("--sparsity") {
            guard let parsed = SparsityMode(text) else {
                throw UsageError("--sparsity must be dense, exact, threshold[:S], down[:S] or predictor (0 < S < 1), not \"\(text)\"")
            }
            mode = parsed
        } else {
            mode = shipsPredictors ? .predictor : .dense
        }
        let budget = try arguments.vramBudget()
        if budget != nil, mode != .predictor { throw UsageError(SparseExecutionError.hybridNeedsPredictor.description) }
        if mode == .dense { return nil }
        for flag in ["--stats", "--predictor"] {
            if let path = arguments.string(flag), !FileManager.default.fileExists(atPath: path) {
                throw UsageError("no file at \(path) (\(flag))")
            }
        }
        let statistics = FileManager.default.fileExists(atPath: statsPath) ? try ActivationStatistics(path: statsPath) : nil
        var predictor: ActiveNeuronPredictor?
        if mode == .predictor, FileManager.default.fileExists(atPath: predictorPath) {
            predictor = try loadPredictor(predictorPath, model: model)
        }
        let hybrid = try budget.flatMap {
            try hybridPlacement(arguments, budget: $0, model: model, modelPath: modelPath, statsPath: statsPath,
                                statistics: statistics, predictor: predictor, contextLength: contextLength)
        }
        do {
            return try SparseExecution(mode: mode, model: model, statistics: statistics, predictor: predictor, pool: pool, hybrid: hybrid)
        } catch let error as OpenCLError where hybrid != nil && error.isUnsupportedType {
            // A matrix type the device has no kernels for: the CPU does all, as without a device.
            Terminal.note("ember: \(error); the CPU computes every neuron")
            return try SparseExecution(mode: mode, model: model, statistics: statistics, predictor: predictor, pool: pool)
        }
    }

    /// Device bytes a hybrid run's working buffers take beside the weights: the FFN's, and the
    /// dense blocks' when the device runs them. `ember place` reserves the same, so its files
    /// match the runs.
    static func deviceWorkingBytes(_ model: LanguageModel, denseBlocks: Bool, contextLength: Int) -> Int {
        DeviceFeedForward.workingBytes(model.config)
            + (denseBlocks ? DeviceDenseBlocks.workingBytes(model.config, capacity: contextLength) : 0)
    }

    /// The device, its dense blocks and its FFN neurons for `--vram-budget`, or nil (with a
    /// note) when no OpenCL device is there or `--gpu off` asks for the CPU alone. Attention
    /// blocks (with a KV cache for the whole context) and the output head come first where the
    /// device can run them.
    static func hybridPlacement(_ arguments: Arguments, budget: Int, model: LanguageModel, modelPath: String, statsPath: String,
                                statistics: ActivationStatistics?, predictor: ActiveNeuronPredictor?,
                                contextLength: Int) throws -> HybridPlacement? {
        guard predictor != nil else { throw SparseExecutionError.needsPredictor }
        guard let statistics else {
            throw UsageError("--vram-budget places the hottest neurons by their firing counts: make statistics with `ember profile` "
                + "and pass --stats FILE")
        }
        let choice = try arguments.deviceChoice()
        if choice == .off {
            Terminal.note("ember: --gpu off: the CPU computes every neuron")
            return nil
        }
        let system: OpenCLSystem
        switch arguments.openCLSystem() {
        case let .success(found): system = found
        case let .failure(unavailable):
            Terminal.note("ember: \(unavailable); the CPU computes every neuron")
            return nil
        }
        let device = try OpenCLDevice(system, choice: choice, memoryBudget: budget)
        // Counts of the sparsity the predictors were trained for, else the statistics' highest.
        let trained = (predictor as? PredictorSet)?.metadata.targetSparsity ?? 0
        let target = statistics.targetIndex(for: trained) != nil ? trained : statistics.sparsityTargets.max()
        let attentionReason = DeviceDenseBlocks.unsupportedReason(model)
        if let attentionReason { Terminal.note("ember: attention stays on the CPU: \(attentionReason)") }
        let working = deviceWorkingBytes(model, denseBlocks: attentionReason == nil, contextLength: contextLength)
        let options = PlacementOptions(sparsityTarget: target, kvCacheTokens: contextLength,
                                       placesDenseBlocks: attentionReason == nil, reservedBytes: min(budget, working))
        let placementPath = arguments.string("--placement")
        if let placementPath, !FileManager.default.fileExists(atPath: placementPath) {
            throw UsageError("no file at \(placementPath) (--placement)")
        }
        let (placement, source) = try Placement.load(model: model, modelPath: modelPath, budget: budget, options: options,
                                                     statisticsPath: statsPath, placementPath: placementPath)
        let placed = placement.deviceNeurons.reduce(0) { $0 + $1.count }
        let origin: String
        switch source {
        case let .file(path): origin = "from " + path
        case .solved:
            origin = "solved from " + statsPath
                + (placementPath.map { ", as \($0) was made for another budget, model, statistics or settings" } ?? "")
        }
        let attentionLayers = placement.denseBlocks.compactMap { block -> Int? in
            if case let .attention(layer) = block { return layer } else { return nil }
        }
        let outputHead = placement.denseBlocks.contains(.outputHead)
        Terminal.note(String(format: "ember: hybrid: %@ holds the attention of %d of %d layers%@ (%@ with the KV caches) and "
                                + "%d of %d FFN neurons (%@) in a %@ budget; expected device share of activated neurons %.1f %% "
                                + "(placement %@)",
                             device.info.name, attentionLayers.count, model.config.layerCount,
                             outputHead ? " and the output head" : "", ByteSize.format(placement.denseBytes),
                             placed, model.config.layerCount * model.config.feedForwardLength,
                             ByteSize.format(placement.neuronBytes), ByteSize.format(budget),
                             placement.expectedDeviceShare * 100, origin))
        return HybridPlacement(device: device, deviceNeurons: placement.deviceNeurons, attentionLayers: attentionLayers,
                               outputHead: outputHead)
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
