import CEmberKernels
import Foundation

// Running the model to gather what the Sparsity layer learns from: the engine drives the
// session; Sparsity/ holds the accumulators and file formats it fills.

extension Context {
    /// Runs the model over `tokens` by the perplexity rule (consecutive chunks of `context`
    /// tokens, a shorter tail dropped, each from an empty cache) and records how its FFN neurons
    /// fire: a pass to calibrate the thresholds, then one to count each neuron at them, which
    /// also measures the sparsity they reach (ReLU models: one pass, nothing to calibrate).
    /// `progress(chunksDone, chunks)` is called after every chunk of either.
    func profileActivations(_ tokens: [Int32], context: Int, targets: [Float],
                                   progress: (Int, Int) -> Void = { _, _ in }) throws -> ActivationProfile {
        let profiler = ActivationProfiler(config: model.config, targets: targets)
        let pool = self.pool
        let chunks = tokens.count / max(context, 1)
        let passes = model.config.activation == .relu ? 1 : 2
        try runChunks(tokens, context: context, observer: { profiler.observe($0, pool: pool) }) { done, _ in
            progress(done, passes * chunks)
        }
        var statistics = profiler.statistics()
        guard passes == 2 else { return ActivationProfile(statistics: statistics, measured: nil) }
        var near: NearValues = Array(repeating: Array(repeating: [], count: statistics.sparsityTargets.count),
                                     count: statistics.layers.count)
        var measured = try measureSparsity(tokens, context: context, statistics: statistics, near: &near) { done, _ in
            progress(chunks + done, passes * chunks)
        }
        for l in statistics.layers.indices {
            for s in statistics.sparsityTargets.indices {
                Self.refine(&statistics, &measured, layer: l, target: s, near: near[l][s])
            }
            statistics.layers[l].counts = measured.counts[l]
        }
        return ActivationProfile(statistics: statistics, measured: measured)
    }

    /// Moves a gate threshold from its histogram estimate to the exact quantile of the values
    /// seen, using the values counted near it, and corrects the neurons' counts to match. The
    /// histogram's bin is exact, so the quantile lies within the window; the estimate inside it
    /// can miss where values pile up at the activation's minimum.
    static func refine(_ statistics: inout ActivationStatistics, _ measured: inout MeasuredSparsity,
                       layer l: Int, target s: Int, near: [(value: Float, neuron: Int32)]) {
        let threshold = statistics.layers[l].gateThresholds[s]
        guard threshold > .leastNonzeroMagnitude, !near.isEmpty else { return }
        let f = statistics.feedForwardLength
        let all = Double(statistics.tokens) * Double(f)
        let active = measured.counts[l][s].reduce(0.0) { $0 + Double($1) }
        let sorted = near.sorted { $0.value < $1.value }
        // Inactive values below the window, and how many of the window's must join them.
        let belowWindow = (all - active) - Double(sorted.prefix { $0.value < threshold }.count)
        let wanted = (Double(statistics.sparsityTargets[s]) * all).rounded() - belowWindow
        guard wanted >= 0, wanted < Double(sorted.count) else { return }
        let exact = sorted[Int(wanted)].value
        // Thresholds must keep the order of their targets; one that would cross a neighbour
        // (windows overlapping) stays where the histogram put it.
        let thresholds = statistics.layers[l].gateThresholds
        guard s == 0 || exact >= thresholds[s - 1], s + 1 == thresholds.count || exact <= thresholds[s + 1] else { return }
        for (value, neuron) in sorted {
            if value >= threshold && value < exact { measured.counts[l][s][Int(neuron)] -= 1 }
            if value >= exact && value < threshold { measured.counts[l][s][Int(neuron)] += 1 }
        }
        statistics.layers[l].gateThresholds[s] = exact
        measured.gate[l][s] = 1 - measured.counts[l][s].reduce(0.0) { $0 + Double($1) } / all
    }

    /// Re-runs `tokens` (same rule) and counts exactly what the thresholds of `statistics` do:
    /// a check of the calibration.
    func measureSparsity(_ tokens: [Int32], context: Int, statistics: ActivationStatistics,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> MeasuredSparsity {
        try measureSparsity(tokens, context: context, statistics: statistics, near: nil, progress: progress)
    }

    /// Gate values within `Self.window` of each gate threshold, with their neuron: [layer][target].
    typealias NearValues = [[[(value: Float, neuron: Int32)]]]
    /// Half-width of the window around a threshold, relative: three 1/1024-octave bins, so it
    /// holds the bin where the exact quantile lies.
    static let window: Float = 1.0 / 512

    func measureSparsity(_ tokens: [Int32], context: Int, statistics: ActivationStatistics,
                         near: UnsafeMutablePointer<NearValues>?, progress: (Int, Int) -> Void) throws -> MeasuredSparsity {
        let layers = statistics.layers.count, targets = statistics.sparsityTargets.count
        let relu = statistics.activation == VectorKernels.Activation.relu.rawValue
        let f = statistics.feedForwardLength
        // Thresholds ascend with the target, so one scan per value finds how many it passes.
        // gatePassed[l][i * (targets + 1) + k]: tokens on which neuron i passed exactly k gate
        // thresholds; downPassed[l][k] the same for the down thresholds, over all neurons.
        var gatePassed = Array(repeating: [Int](repeating: 0, count: f * (targets + 1)), count: layers)
        var downPassed = Array(repeating: [Int](repeating: 0, count: targets + 1), count: layers)
        var seen = Array(repeating: 0, count: layers)
        let pool = self.pool
        try runChunks(tokens, context: context, observer: { o in
            let layer = statistics.layers[o.layer]
            var partialDown = Array(repeating: [Int](repeating: 0, count: targets + 1), count: pool.threadCount)
            let collecting = near != nil
            let lows = layer.gateThresholds.map { $0 * (1 - Self.window) }
            let highs = layer.gateThresholds.map { $0 * (1 + Self.window) }
            var partialNear = Array(repeating: Array(repeating: [(value: Float, neuron: Int32)](), count: targets),
                                    count: pool.threadCount)
            gatePassed[o.layer].withUnsafeMutableBufferPointer { gate in
                partialDown.withUnsafeMutableBufferPointer { partialDown in
                  partialNear.withUnsafeMutableBufferPointer { partialNear in
                    pool.run { thread in
                        // Threads own disjoint neurons, so the per-neuron counters need no locks.
                        let neurons = ThreadPool.share(of: f, thread: thread, threads: pool.threadCount, granularity: 16)
                        partialDown[thread].withUnsafeMutableBufferPointer { down in
                            for t in 0..<o.tokenCount {
                                let a = o.activated.row(t)
                                let u = o.up?.row(t)
                                for i in neurons {
                                    let g = relu ? (a[i] > 0 ? Float.infinity : -1) : abs(a[i])
                                    let d = relu ? g : abs(u == nil ? a[i] : a[i] * u![i])
                                    var k = 0
                                    while k < targets && g >= layer.gateThresholds[k] { k += 1 }
                                    gate[i * (targets + 1) + k] += 1
                                    if collecting {
                                        // g lies between thresholds k - 1 and k: near either?
                                        if k < targets && g >= lows[k] { partialNear[thread][k].append((g, Int32(i))) }
                                        if k > 0 && g < highs[k - 1] { partialNear[thread][k - 1].append((g, Int32(i))) }
                                    }
                                    k = 0
                                    while k < targets && d >= layer.downThresholds[k] { k += 1 }
                                    down[k] += 1
                                }
                            }
                        }
                    }
                  }
                }
            }
            if let near {
                for p in partialNear {
                    for t in 0..<targets { near.pointee[o.layer][t] += p[t] }
                }
            }
            for p in partialDown {
                for k in 0...targets { downPassed[o.layer][k] += p[k] }
            }
            seen[o.layer] += o.tokenCount
        }, progress: progress)
        // Active at target s: passed more than s thresholds.
        let counts = (0..<layers).map { l in
            (0..<targets).map { s in
                (0..<f).map { i in Float(gatePassed[l][(i * (targets + 1) + s + 1)...(i * (targets + 1) + targets)].reduce(0, +)) }
            }
        }
        let all = { (l: Int) in Double(seen[l]) * Double(f) }
        return MeasuredSparsity(
            gate: (0..<layers).map { l in counts[l].map { 1 - $0.reduce(0.0) { $0 + Double($1) } / all(l) } },
            down: (0..<layers).map { l in (0..<targets).map { s in 1 - Double(downPassed[l][(s + 1)...].reduce(0, +)) / all(l) } },
            counts: counts)
    }

    /// Evaluates `tokens` in chunks of `context` from an empty cache with `observer` watching
    /// every FFN; the observer is removed afterwards, even on error.
    fileprivate func runChunks(_ tokens: [Int32], context: Int, observer: @escaping (FeedForwardObservation) -> Void,
                           progress: (Int, Int) -> Void) throws {
        guard context >= 1 else { throw PerplexityError.contextTooSmall(context) }
        guard context <= contextLength else { throw ModelError.contextOverflow(needed: context, context: contextLength) }
        let chunks = tokens.count / context
        guard chunks > 0 else { throw PerplexityError.textTooShort(tokens: tokens.count, context: context) }
        pass.feedForwardObserver = observer
        defer {
            pass.feedForwardObserver = nil
            reset()
        }
        for chunk in 0..<chunks {
            reset()
            try advance(Array(tokens[chunk * context..<(chunk + 1) * context]))
            progress(chunk + 1, chunks)
        }
    }
}

extension PredictorTrainingData {
    /// Runs the model over `tokens` in chunks of `context` tokens, each from an empty cache
    /// (as perplexity does), and records for `layers` the FFN input and the active set: neuron
    /// i is active when |act(gate_i)| ≥ thresholds[l] (with `relu`, when act > 0).
    /// `progress(done, total)` counts chunks.
    static func collect(session: Context, tokens: [Int32], context: Int, layers: [Int],
                               thresholds: [Float], relu: Bool,
                               progress: (Int, Int) -> Void = { _, _ in }) throws -> PredictorTrainingData {
        let config = session.model.config
        let d = config.embeddingLength, f = config.feedForwardLength
        let words = (f + 63) / 64
        let count = tokens.count / context * context
        var inputs = [Int: [Float]](), labels = [Int: [UInt64]]()
        for l in layers {
            inputs[l] = []; inputs[l]!.reserveCapacity(count * d)
            labels[l] = []; labels[l]!.reserveCapacity(count * words)
        }
        let wanted = Set(layers)
        try session.runChunks(tokens, context: context, observer: { observation in
            let l = observation.layer
            guard wanted.contains(l) else { return }
            let n = observation.tokenCount
            var bits = [UInt64](repeating: 0, count: n * words)
            bits.withUnsafeMutableBufferPointer { bits in
                for t in 0..<n {
                    ember_active_bits(observation.activated.row(t), Int64(f), relu ? 0 : thresholds[l], relu ? 0 : 1,
                                      bits.baseAddress! + t * words)
                }
            }
            labels[l]!.append(contentsOf: bits)
            inputs[l]!.append(contentsOf: UnsafeBufferPointer(start: observation.input.pointer, count: n * d))
        }, progress: progress)
        let all = (0..<config.layerCount).map { l in
            inputs[l].map { Layer(inputs: $0, labels: labels[l]!) }
        }
        return PredictorTrainingData(inputLength: d, neuronCount: f, tokenCount: count, layers: all)
    }
}

// MARK: what apps call

extension Session {
    /// How the FFN neurons fire on `text` (its first `maxTokens` tokens), in consecutive chunks of
    /// `chunkLength` tokens each from an empty cache, and the per-layer thresholds that reach each
    /// sparsity of `targets` (ReLU models: their natural sparsity, one target).
    /// `progress(done, total)` counts chunks over both passes.
    public func profile(text: String, chunkLength: Int, maxTokens: Int? = nil, targets: [Float],
                        progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> ActivationProfile {
        let tokens = Array(model.corpusTokens(text).prefix(maxTokens ?? Int.max))
        var profile = try context.profileActivations(tokens, context: chunkLength, targets: targets) { progress?($0, $1) }
        profile.statistics.sourceModel = model.name
        profile.statistics.corpusSHA256 = SHA256.hex(Array(text.utf8))
        return profile
    }

    /// Trains one predictor per layer of `layers` (default: all) on `text` (its first
    /// `maxTokens` tokens; the last share of them held out for the report), labelled by the
    /// statistics' gate thresholds for `sparsity` (default: their only target), and writes them
    /// to `path` as Ember's predictor file. `progress(stage, done, total)`: chunks collected,
    /// then layers trained.
    public func trainPredictors(text: String, statistics: ActivationStatistics, sparsity: Float? = nil,
                                options: PredictorTrainingOptions = PredictorTrainingOptions(), chunkLength: Int,
                                maxTokens: Int? = nil, layers: [Int]? = nil, writingTo path: String,
                                progress: (@Sendable (PredictorTrainingStage, Int, Int) -> Void)? = nil) throws -> PredictorTrainingReport {
        let c = model.language.config
        guard statistics.feedForwardLength == c.feedForwardLength, statistics.layers.count == c.layerCount else {
            throw SessionError.mismatch("the statistics describe \(statistics.layers.count) layers of \(statistics.feedForwardLength) "
                                        + "neurons; \(model.path) has \(c.layerCount) of \(c.feedForwardLength)")
        }
        guard let chosen = sparsity ?? (statistics.sparsityTargets.count == 1 ? statistics.sparsityTargets[0] : nil) else {
            throw SessionError.invalidOption("the statistics have targets \(statistics.sparsityTargets): choose one sparsity")
        }
        guard let target = statistics.targetIndex(for: chosen) else {
            throw SessionError.invalidOption("the statistics have no threshold for sparsity \(chosen); they have \(statistics.sparsityTargets)")
        }
        guard PredictorTrainingOptions.weightTypes.contains(options.weightType) else {
            throw SessionError.invalidOption("predictor weights can be \(PredictorTrainingOptions.weightTypes.map(\.description)), not \(options.weightType)")
        }
        guard c.embeddingLength % options.weightType.blockSize == 0 else {
            throw SessionError.invalidOption("\(options.weightType) predictors need an embedding length that is a multiple of "
                                             + "\(options.weightType.blockSize); this model's is \(c.embeddingLength)")
        }
        let layers = layers ?? Array(0..<c.layerCount)
        if let bad = layers.first(where: { !(0..<c.layerCount).contains($0) }) {
            throw SessionError.invalidOption("layer \(bad) is not one of the model's \(c.layerCount)")
        }
        let tokens = Array(model.corpusTokens(text).prefix(maxTokens ?? Int.max))
        // Training needs a few mini-batches of tokens beside the held-out and validation shares.
        let needed = Int(Double(options.batchSize) / (1 - options.heldOutShare - options.validationShare)) + 2 * chunkLength
        guard tokens.count >= needed else {
            throw SessionError.invalidOption("the text has \(tokens.count) tokens; training needs at least \(needed)")
        }
        let relu = statistics.activation == VectorKernels.Activation.relu.rawValue
        let data = try PredictorTrainingData.collect(session: context, tokens: tokens, context: chunkLength, layers: layers,
                                                     thresholds: statistics.layers.map { $0.gateThresholds[target] },
                                                     relu: relu) { progress?(.collecting, $0, $1) }
        var done = 0
        let total = layers.count
        let result = PredictorTrainer.train(data: data, layerCount: c.layerCount,
                                            hotShares: statistics.layers.map { PredictorTrainer.hotShare(counts: $0.counts[target]) },
                                            options: options, pool: context.pool, sourceModel: model.name,
                                            targetSparsity: chosen) { _ in
            done += 1
            progress?(.training, done, total)
        }
        try result.predictors.write(to: path)
        return PredictorTrainingReport(layers: result.reports, trainTokens: result.trainTokens,
                                       validationTokens: result.validationTokens, heldOutTokens: result.heldOutTokens,
                                       targetSparsity: chosen, byteCount: result.predictors.byteCount)
    }
}

/// The two stages of predictor training, for progress reports.
public enum PredictorTrainingStage: Sendable {
    case collecting, training
}
