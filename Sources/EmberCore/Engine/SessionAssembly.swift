import Foundation

/// Builds the context a session runs on from its options: the KV cache and threads, the sparse
/// FFN with its statistics and predictors, and for hybrid runs the device, its placement and
/// the dense operations it takes over. What the user should know about the result (where the
/// placement came from, what stays on the CPU and why) is returned as notes.
struct SessionAssembly {
    let model: Model
    let options: SessionOptions
    private(set) var notes: [String] = []

    init(model: Model, options: SessionOptions) {
        self.model = model
        self.options = options
    }

    /// The context length `options` asks for (default 2048, at most the model's).
    func contextLength() throws -> Int {
        let trained = model.language.config.contextLength
        let context = options.contextLength ?? min(trained, 2048)
        guard context <= trained else { throw SessionError.contextTooLarge(context: context, model: trained) }
        do {
            try KVCache.check(model.language.config, type: options.kvCacheType)
        } catch {
            throw SessionError.invalidOption("\(error)")
        }
        // A crafted or mistaken size must fail here, not in an allocation.
        let type = options.kvCacheType
        guard let bytes = KVCache.byteCount(model.language.config, capacity: context, type: type),
              bytes <= Int(ProcessInfo.processInfo.physicalMemory) else {
            throw SessionError.cacheTooLarge(bytes: KVCache.byteCount(model.language.config, capacity: context, type: type)
                .map { ByteSize.format($0) } ?? "more than 2^63 bytes")
        }
        return context
    }

    mutating func makeContext() throws -> Context {
        try options.validate()
        let contextLength = try contextLength()
        let context = Context(model: model.language, threads: options.threads, contextLength: contextLength,
                              batchSize: options.batchSize, cacheType: options.kvCacheType)
        guard let sparse = try sparseExecution(pool: context.pool, contextLength: contextLength) else { return context }
        context.sparse = sparse
        if let hybrid = sparse.hybridPlacement, !hybrid.attentionLayers.isEmpty || hybrid.outputHead {
            context.denseBlocks = try DeviceDenseBlocks(device: hybrid.device, model: model.language, layers: hybrid.attentionLayers,
                                                        outputHead: hybrid.outputHead, capacity: contextLength)
        }
        return context
    }

    var statisticsPath: String { options.statisticsPath ?? CompanionFile.statistics.path(besideModel: model.path) }
    /// The predictors: the options' file, else those in the model file itself (PowerInfer's), else
    /// the file beside the model.
    var predictorPath: String {
        options.predictorPath ?? (model.hasOwnPredictors ? model.path : CompanionFile.predictor.path(besideModel: model.path))
    }

    /// The sparsity the options ask for: theirs, else predictor when the model file carries
    /// predictors (PowerInfer's files) or statistics and predictors are beside the model, else dense.
    var mode: SparsityMode {
        if let mode = options.sparsity { return mode }
        if options.predictorPath == nil, model.hasOwnPredictors { return .predictor }
        let files = FileManager.default
        return files.fileExists(atPath: statisticsPath) && files.fileExists(atPath: predictorPath) ? .predictor : .dense
    }

    /// The sparse FFN the options ask for, or nil for dense.
    private mutating func sparseExecution(pool: ThreadPool, contextLength: Int) throws -> SparseExecution? {
        let mode = self.mode
        if options.deviceMemoryBudget != nil, mode != .predictor { throw SparseExecutionError.hybridNeedsPredictor }
        if mode == .dense { return nil }
        for (path, what) in [(options.statisticsPath, "activation statistics file"), (options.predictorPath, "predictor file")] {
            if let path, !FileManager.default.fileExists(atPath: path) { throw SessionError.missingFile(path: path, what: what) }
        }
        let statistics = FileManager.default.fileExists(atPath: statisticsPath) ? try ActivationStatistics(path: statisticsPath) : nil
        if let statistics { try check(statistics) }
        var predictor: PredictorSet?
        if mode == .predictor, FileManager.default.fileExists(atPath: predictorPath) {
            predictor = try loadPredictor(predictorPath)
        }
        let hybrid = try options.deviceMemoryBudget.flatMap {
            try hybridPlacement(budget: $0, statistics: statistics, predictor: predictor, contextLength: contextLength)
        }
        let language = model.language
        do {
            return try SparseExecution(mode: mode, model: language, statistics: statistics, predictor: predictor, pool: pool, hybrid: hybrid)
        } catch let error as OpenCLError where hybrid != nil && error.isUnsupportedType {
            // A matrix type the device has no kernels for: the CPU does all, as without a device.
            notes.append("\(error); the CPU computes every neuron")
            return try SparseExecution(mode: mode, model: language, statistics: statistics, predictor: predictor, pool: pool)
        }
    }

    private func check(_ statistics: ActivationStatistics) throws {
        let c = model.language.config
        guard statistics.layers.count == c.layerCount, statistics.feedForwardLength == c.feedForwardLength else {
            throw SessionError.mismatch("\(statisticsPath) describes \(statistics.layers.count) layers of \(statistics.feedForwardLength) "
                                        + "FFN neurons; \(model.path) has \(c.layerCount) layers of \(c.feedForwardLength)")
        }
    }

    /// A predictor file (Ember's, or PowerInfer's fc1/fc2 tensors, perhaps in the model file
    /// itself), checked against the model.
    private func loadPredictor(_ path: String) throws -> PredictorSet {
        let predictor = path == model.path ? try PredictorSet(file: model.language.file) : try PredictorSet(path: path)
        let c = model.language.config
        try predictor.check(against: c, path: path)
        guard predictor.layers.count == c.layerCount else {
            throw SessionError.mismatch("\(path) has predictors for \(predictor.layers.count) layers; \(model.path) has \(c.layerCount)")
        }
        return predictor
    }

    /// The device, its dense operations and its FFN neurons under `budget`, or nil (with a
    /// note) when no OpenCL device is there or the options turn it off. Attention (with a KV
    /// cache for the whole context), the output head and FFN neurons go where they save the CPU
    /// the most bytes read per token (`Placement.solve`).
    private mutating func hybridPlacement(budget: Int, statistics: ActivationStatistics?, predictor: PredictorSet?,
                                          contextLength: Int) throws -> HybridPlacement? {
        guard predictor != nil else { throw SparseExecutionError.needsPredictor }
        if options.device == .off {
            notes.append("the device is turned off: the CPU computes every neuron")
            return nil
        }
        let system: OpenCLSystem
        switch OpenCLSystem.discover(libraryPath: options.openCLLibraryPath ?? OpenCLLibrary.defaultPath) {
        case let .success(found): system = found
        case let .failure(unavailable):
            notes.append("\(unavailable); the CPU computes every neuron")
            return nil
        }
        let device = try OpenCLDevice(system, choice: options.device, memoryBudget: budget)
        // Counts of the sparsity the predictors were trained for, else the statistics' highest
        // (without statistics, only a placement file can serve: PowerInfer's, or Ember's).
        let trained = predictor?.metadata.targetSparsity ?? 0
        let target = statistics.flatMap { $0.targetIndex(for: trained) != nil ? trained : $0.sparsityTargets.max() }
        // The device's working buffers come first, as `Model.place` reserves them.
        let working = model.deviceWorkingBytes(denseCapacity: contextLength)
        let placementOptions = PlacementOptions(sparsityTarget: target, kvCacheTokens: contextLength, placesDenseBlocks: true,
                                                reservedBytes: min(budget, working))
        if let path = options.placementPath, !FileManager.default.fileExists(atPath: path) {
            throw SessionError.missingFile(path: path, what: "placement file")
        }
        let (placement, source) = try Placement.load(model: model.language, modelPath: model.path, budget: budget,
                                                     options: placementOptions, statisticsPath: statisticsPath,
                                                     placementPath: options.placementPath)
        let placed = placement.deviceNeurons.reduce(0) { $0 + $1.count }
        let origin: String
        switch source {
        case let .file(path): origin = "from " + path
        case .solved:
            origin = "solved from " + statisticsPath
                + (options.placementPath.map { ", as \($0) was made for another budget, model, statistics or settings" } ?? "")
        }
        let attentionLayers = placement.denseBlocks.compactMap { block -> Int? in
            if case let .attention(layer) = block { return layer } else { return nil }
        }
        let outputHead = placement.denseBlocks.contains(.outputHead)
        let c = model.language.config
        notes.append(String(format: "hybrid: %@ holds the attention of %d of %d layers%@ (%@ with the KV caches) and "
                                + "%d of %d FFN neurons (%@) in a %@ budget; expected device share of activated neurons %.1f %% "
                                + "(placement %@)",
                            device.info.name, attentionLayers.count, c.layerCount, outputHead ? " and the output head" : "",
                            ByteSize.format(placement.denseBytes), placed, c.layerCount * c.feedForwardLength,
                            ByteSize.format(placement.neuronBytes), ByteSize.format(budget),
                            placement.expectedDeviceShare * 100, origin))
        return HybridPlacement(device: device, deviceNeurons: placement.deviceNeurons, attentionLayers: attentionLayers,
                               outputHead: outputHead)
    }
}
