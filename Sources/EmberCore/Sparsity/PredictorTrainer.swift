import CEmberKernels
import Foundation

/// How `PredictorTrainer` trains and sizes predictors.
public struct PredictorTrainingOptions: Sendable {
    /// Share of truly active neurons the threshold τ_l must keep (chosen on validation tokens).
    public var targetRecall: Float = 0.95
    public var minRank = 32
    /// 0: the largest multiple of 16 at which the predictor costs at most a third of the
    /// multiply-adds of the gate projection it saves, r·(d + F) ≤ d·F / 3.
    public var maxRank = 0
    /// Rank tries per layer (each doubles the previous rank).
    public var maxAttempts = 3
    /// A rank is enough when, at the recall target, the predicted share is at most
    /// active + maxExtraShare · (1 − active): the predictor skips at least that part of the
    /// truly inactive neurons.
    public var maxExtraShare: Float = 0.5
    public var epochs = 12
    public var batchSize = 64
    public var learningRate: Float = 3e-3
    /// Weight of an active neuron's loss term relative to an inactive one's (misses cost quality).
    public var positiveWeight: Float = 2
    public var seed: UInt64 = 1
    /// Token shares, from the end of the data: the last `heldOutShare` only measures the
    /// result; the `validationShare` before it chooses τ and the rank; the rest trains.
    public var heldOutShare = 0.15
    public var validationShare = 0.10
    /// Storage type of the weights: F16 (half F32's bytes read per token at the same recall),
    /// F32, or Q8_0 / Q4_0 (a quarter / an eighth of F32's bytes; ranks then step by 32, the
    /// quant block). Thresholds are chosen on the stored weights, so the recall target holds
    /// for what is written.
    public var weightType: TensorType = .f16
    /// The types `weightType` may be.
    public static let weightTypes: [TensorType] = [.f16, .f32, .q8_0, .q4_0]
    public init() {}
}

/// What training found for one layer. Figures are on held-out tokens unless named otherwise.
public struct PredictorLayerReport: Sendable {
    public struct Attempt: Sendable {
        public var rank: Int
        /// Predicted share at the recall target on validation tokens.
        public var validationShare: Float
        public var finalLoss: Double
    }
    public var layer: Int
    public var rank: Int
    /// Share of neurons giving 80 % of all activations (the skew the first rank came from).
    public var hotShare: Float
    /// Share of (token, neuron) pairs truly active.
    public var activeShare: Float
    public var threshold: Float
    public var recall: Float
    public var precision: Float
    public var predictedShare: Float
    public var attempts: [Attempt]
    public var seconds: Double
}

struct PredictorTrainingResult {
    var predictors: PredictorSet
    /// Per trained layer, ascending.
    var reports: [PredictorLayerReport]
    var trainTokens: Int, validationTokens: Int, heldOutTokens: Int
}

/// What training predictors produced and how well they do on held-out tokens.
public struct PredictorTrainingReport: Sendable {
    /// Per trained layer, ascending.
    public var layers: [PredictorLayerReport]
    public var trainTokens: Int, validationTokens: Int, heldOutTokens: Int
    /// The sparsity whose thresholds labelled the data.
    public var targetSparsity: Float
    /// Bytes of predictor weights read per token.
    public var byteCount: Int
}

/// Trains one low-rank predictor per layer (score = fc2 · relu(fc1 · x)) by minimising a
/// weighted binary cross-entropy of sigmoid(score) with Adam on mini-batches. Layers train
/// in parallel, one per pool thread; every layer's randomness comes from (seed, layer, rank),
/// so results do not depend on the thread count.
public enum PredictorTrainer {
    static func train(data: PredictorTrainingData, layerCount: Int, hotShares: [Float]? = nil,
                             options: PredictorTrainingOptions, pool: ThreadPool,
                             sourceModel: String = "", targetSparsity: Float = 0,
                             layerDone: @escaping (PredictorLayerReport) -> Void = { _ in }) -> PredictorTrainingResult {
        let n = data.tokenCount
        let heldOut = max(1, Int(Double(n) * options.heldOutShare))
        let validation = max(1, Int(Double(n) * options.validationShare))
        let split = Split(train: 0..<(n - heldOut - validation), validation: (n - heldOut - validation)..<(n - heldOut),
                          test: (n - heldOut)..<n)
        precondition(split.train.count >= options.batchSize / 4, "too few tokens to train on")
        let todo = (0..<layerCount).filter { data.layers[$0] != nil }
        let lock = NSLock()
        var next = 0
        var trained = [Int: (LayerWeights, PredictorLayerReport)]()
        pool.run { _ in
            while true {
                lock.lock()
                let index = next
                next += 1
                lock.unlock()
                guard index < todo.count else { return }
                let l = todo[index]
                let hot = hotShares?[l] ?? hotShare(data: data, layer: l, tokens: split.train)
                let result = trainLayer(data: data, layer: l, hotShare: hot, split: split, options: options)
                lock.lock()
                trained[l] = result
                layerDone(result.1)
                lock.unlock()
            }
        }
        var metadata = PredictorSet.Metadata()
        metadata.sourceModel = sourceModel
        metadata.targetSparsity = targetSparsity
        metadata.targetRecall = options.targetRecall
        metadata.recall = (0..<layerCount).map { trained[$0]?.1.recall ?? 1 }
        metadata.precision = (0..<layerCount).map { trained[$0]?.1.precision ?? 0 }
        metadata.predictedShare = (0..<layerCount).map { trained[$0]?.1.predictedShare ?? 1 }
        let predictors = PredictorSet(fc1: (0..<layerCount).map { trained[$0]?.0.fc1 },
                                      fc2: (0..<layerCount).map { trained[$0]?.0.fc2 },
                                      ranks: (0..<layerCount).map { trained[$0]?.0.rank ?? 0 },
                                      thresholds: (0..<layerCount).map { trained[$0]?.1.threshold ?? 0 },
                                      inputLength: data.inputLength, neuronCount: data.neuronCount,
                                      type: options.weightType, metadata: metadata)
        return PredictorTrainingResult(predictors: predictors, reports: todo.map { trained[$0]!.1 },
                                       trainTokens: split.train.count, validationTokens: split.validation.count,
                                       heldOutTokens: split.test.count)
    }

    /// Smallest share of neurons that together account for 80 % of activations.
    public static func hotShare(counts: [Float]) -> Float {
        Float(LocalitySummary.entry(counts: counts, tokens: 0).coveringShare)
    }

    /// The first rank tried: proportional to the hot share (a layer whose activations spread
    /// over many neurons needs more directions to tell them apart), F/8 at hot share 1.
    public static func initialRank(hotShare: Float, neurons: Int, options: PredictorTrainingOptions) -> Int {
        let raw = Int((hotShare * Float(neurons) / 8).rounded(.up))
        let step = rankStep(options.weightType)
        return min(options.maxRank, roundUp(max(options.minRank, raw), to: step))
    }

    /// Ranks are multiples of this: 16 for float weights, the quant block for quantized ones
    /// (fc2's rows are `rank` long).
    static func rankStep(_ type: TensorType) -> Int { max(16, type.blockSize) }

    private static func roundUp(_ x: Int, to step: Int) -> Int { (x + step - 1) / step * step }

    /// The largest rank worth trying for inputs of length d and F neurons (see `maxRank`).
    public static func rankLimit(inputLength d: Int, neurons f: Int, options: PredictorTrainingOptions) -> Int {
        let step = rankStep(options.weightType)
        return roundUp(options.maxRank > 0 ? options.maxRank : max(options.minRank, d * f / (3 * (d + f)) / step * step), to: step)
    }

    // MARK: one layer

    struct Split { var train: Range<Int>, validation: Range<Int>, test: Range<Int> }

    struct LayerWeights { var rank: Int; var fc1: [Float]; var fc2: [Float] }

    static func hotShare(data: PredictorTrainingData, layer l: Int, tokens: Range<Int>) -> Float {
        let labels = data.layers[l]!.labels, w = data.wordsPerToken
        var counts = [Float](repeating: 0, count: data.neuronCount)
        for t in tokens {
            for i in 0..<data.neuronCount where labels[t * w + i >> 6] >> (i & 63) & 1 == 1 { counts[i] += 1 }
        }
        return hotShare(counts: counts)
    }

    static func trainLayer(data: PredictorTrainingData, layer l: Int, hotShare: Float, split: Split,
                           options: PredictorTrainingOptions) -> (LayerWeights, PredictorLayerReport) {
        let start = DispatchTime.now()
        let d = data.inputLength
        let samples = data.layers[l]!
        var options = options
        options.maxRank = rankLimit(inputLength: d, neurons: data.neuronCount, options: options)
        // Per-dimension RMS over training tokens: the residual stream has a few huge dimensions
        // that would otherwise dominate fc1's first steps. The scale folds into fc1 exactly.
        var inverseScale = [Float](repeating: 0, count: d)
        samples.inputs.withUnsafeBufferPointer { x in
            var sums = [Double](repeating: 0, count: d)
            for t in split.train { for j in 0..<d { sums[j] += Double(x[t * d + j] * x[t * d + j]) } }
            for j in 0..<d { inverseScale[j] = Float(1 / max(sqrt(sums[j] / Double(split.train.count)), 1e-6)) }
        }
        let validationActive = Float(data.activeShare(layer: l, tokens: split.validation))
        let acceptable = validationActive + options.maxExtraShare * (1 - validationActive)
        var rank = initialRank(hotShare: hotShare, neurons: data.neuronCount, options: options)
        var attempts: [PredictorLayerReport.Attempt] = []
        var best: (weights: LayerWeights, share: Float, threshold: Float)?
        for _ in 0..<options.maxAttempts {
            let (model, loss) = fit(data: data, layer: l, rank: rank, inverseScale: inverseScale, split: split, options: options)
            let weights = model.exported(inverseScale: inverseScale, type: options.weightType)
            let scores = score(weights, data: data, layer: l, tokens: split.validation)
            let threshold = thresholdForRecall(scores, labels: samples.labels, data: data, tokens: split.validation,
                                               recall: options.targetRecall)
            let share = confusion(scores, labels: samples.labels, data: data, tokens: split.validation, threshold: threshold).share
            attempts.append(.init(rank: rank, validationShare: share, finalLoss: loss))
            // A larger rank must buy a visibly smaller share to be worth its cost per token.
            if let b = best, share > b.share - 0.01 { break }
            best = (weights, share, threshold)
            if share <= acceptable || rank >= options.maxRank { break }
            rank = min(options.maxRank, rank * 2)
        }
        let chosen = best!
        let testScores = score(chosen.weights, data: data, layer: l, tokens: split.test)
        let test = confusion(testScores, labels: samples.labels, data: data, tokens: split.test, threshold: chosen.threshold)
        let seconds = EmberCore.seconds(since: start)
        let report = PredictorLayerReport(
            layer: l, rank: chosen.weights.rank, hotShare: hotShare,
            activeShare: Float(data.activeShare(layer: l, tokens: split.test)), threshold: chosen.threshold,
            recall: test.recall, precision: test.precision, predictedShare: test.share, attempts: attempts, seconds: seconds)
        return (chosen.weights, report)
    }

    /// Training weights: W1 (r×d, on scaled inputs) and W2 (F×r), row-major.
    struct Model {
        public var rank: Int
        var w1: [Float], w2: [Float]
        let d: Int, f: Int

        /// fc1 = W1 · diag(inverseScale), both rounded to the storage type so every figure
        /// measured afterwards is the stored predictor's.
        func exported(inverseScale: [Float], type: TensorType) -> LayerWeights {
            var fc1 = w1
            for r in 0..<rank { for j in 0..<d { fc1[r * d + j] *= inverseScale[j] } }
            return LayerWeights(rank: rank, fc1: Self.rounded(fc1, type), fc2: Self.rounded(w2, type))
        }

        static func rounded(_ x: [Float], _ type: TensorType) -> [Float] {
            guard type != .f32 else { return x }
            var bytes = [UInt8](repeating: 0, count: type.byteCount(elements: x.count)!)
            var out = [Float](repeating: 0, count: x.count)
            ember_quantize_row(Int32(type.rawValue), x, &bytes, Int64(x.count))
            ember_dequantize_row(Int32(type.rawValue), bytes, &out, Int64(x.count))
            return out
        }
    }

    /// Adam on mini-batches of shuffled training tokens; returns the model and the mean loss
    /// of the last epoch per (token, neuron).
    static func fit(data: PredictorTrainingData, layer l: Int, rank r: Int, inverseScale: [Float], split: Split,
                    options: PredictorTrainingOptions) -> (Model, Double) {
        let d = data.inputLength, f = data.neuronCount, words = data.wordsPerToken
        let b = min(options.batchSize, split.train.count)
        var rng = SplitMix64(seed: options.seed ^ UInt64(l) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(r) << 48)
        // He-style initialisation: unit-scale hidden units on scaled inputs, logits near 0.
        var model = Model(rank: r, w1: (0..<r * d).map { _ in rng.normal() * sqrt(2 / Float(d)) },
                          w2: (0..<f * r).map { _ in rng.normal() * sqrt(1 / Float(r)) * 0.5 }, d: d, f: f)
        let samples = data.layers[l]!
        let x = Matrix(rows: b, length: d), y = [UInt64](repeating: 0, count: b * words)
        var labels = y
        let h = Matrix(rows: b, length: r), hr = Matrix(rows: b, length: r), dh = Matrix(rows: b, length: r)
        let s = Matrix(rows: b, length: f), g = Matrix(rows: b, length: f)
        var g1 = [Float](repeating: 0, count: r * d), g2 = [Float](repeating: 0, count: f * r)
        var m1 = g1, v1 = g1, m2 = g2, v2 = g2
        var order = Array(split.train)
        let stepsPerEpoch = order.count / b
        let totalSteps = stepsPerEpoch * options.epochs
        var step = 0
        var lastEpochLoss = 0.0
        for _ in 0..<options.epochs {
            rng.shuffle(&order)
            lastEpochLoss = 0
            for batch in 0..<stepsPerEpoch {
                samples.inputs.withUnsafeBufferPointer { inputs in
                    for (row, t) in order[batch * b..<(batch + 1) * b].enumerated() {
                        x.row(row).update(from: inputs.baseAddress! + t * d, count: d)
                        inverseScale.withUnsafeBufferPointer { VectorKernels.multiply(x.row(row), by: $0.baseAddress!, d) }
                        for w in 0..<words { labels[row * words + w] = samples.labels[t * words + w] }
                    }
                }
                // Forward: h = x · W1ᵀ, s = relu(h) · W2ᵀ.
                ember_sgemm(0, 1, Int64(b), Int64(r), Int64(d), x.pointer, Int64(d), model.w1, Int64(d), 0, h.pointer, Int64(r))
                hr.pointer.update(from: h.pointer, count: b * r)
                ember_relu(hr.pointer, Int64(b * r))
                ember_sgemm(0, 1, Int64(b), Int64(f), Int64(r), hr.pointer, Int64(r), model.w2, Int64(r), 0, s.pointer, Int64(f))
                // Loss gradient per logit, averaged over the batch's tokens.
                labels.withUnsafeBufferPointer { y in
                    for t in 0..<b {
                        lastEpochLoss += ember_bce_logits_grad(s.row(t), y.baseAddress! + t * words, Int64(f),
                                                               options.positiveWeight, 1 / Float(b), g.row(t))
                    }
                }
                // Backward: dW2 = gᵀ · relu(h), d relu(h) = g · W2, dW1 = dhᵀ · x.
                ember_sgemm(1, 0, Int64(f), Int64(r), Int64(b), g.pointer, Int64(f), hr.pointer, Int64(r), 0, &g2, Int64(r))
                ember_sgemm(0, 0, Int64(b), Int64(r), Int64(f), g.pointer, Int64(f), model.w2, Int64(r), 0, dh.pointer, Int64(r))
                ember_relu_backward(h.pointer, dh.pointer, Int64(b * r))
                ember_sgemm(1, 0, Int64(r), Int64(d), Int64(b), dh.pointer, Int64(r), x.pointer, Int64(d), 0, &g1, Int64(d))
                // Adam, learning rate decaying linearly to a tenth.
                step += 1
                let lr = options.learningRate * (1 - 0.9 * Float(step - 1) / Float(max(totalSteps, 1)))
                let c1 = 1 - pow(Float(0.9), Float(step)), c2 = 1 - pow(Float(0.999), Float(step))
                ember_adam_step(&model.w1, g1, &m1, &v1, Int64(r * d), lr, 0.9, 0.999, 1e-8, c1, c2)
                ember_adam_step(&model.w2, g2, &m2, &v2, Int64(f * r), lr, 0.9, 0.999, 1e-8, c1, c2)
            }
        }
        return (model, lastEpochLoss / Double(max(stepsPerEpoch * b * f, 1)))
    }

    /// Scores of `tokens` (rows) with exported weights.
    static func score(_ w: LayerWeights, data: PredictorTrainingData, layer l: Int, tokens: Range<Int>) -> [Float] {
        let d = data.inputLength, f = data.neuronCount, r = w.rank, n = tokens.count
        var h = [Float](repeating: 0, count: n * r), s = [Float](repeating: 0, count: n * f)
        data.layers[l]!.inputs.withUnsafeBufferPointer { x in
            ember_sgemm(0, 1, Int64(n), Int64(r), Int64(d), x.baseAddress! + tokens.lowerBound * d, Int64(d),
                        w.fc1, Int64(d), 0, &h, Int64(r))
        }
        ember_relu(&h, Int64(n * r))
        ember_sgemm(0, 1, Int64(n), Int64(f), Int64(r), h, Int64(r), w.fc2, Int64(r), 0, &s, Int64(f))
        return s
    }

    /// The largest τ keeping at least `recall` of the active (token, neuron) pairs.
    static func thresholdForRecall(_ scores: [Float], labels: [UInt64], data: PredictorTrainingData,
                                   tokens: Range<Int>, recall: Float) -> Float {
        let f = data.neuronCount, words = data.wordsPerToken
        var active = [Float](repeating: 0, count: scores.count)
        var count = 0
        scores.withUnsafeBufferPointer { s in
            labels.withUnsafeBufferPointer { y in
                active.withUnsafeMutableBufferPointer { out in
                    for (row, t) in tokens.enumerated() {
                        count += Int(ember_gather_active(s.baseAddress! + row * f, y.baseAddress! + t * words, Int64(f),
                                                         out.baseAddress! + count))
                    }
                }
            }
        }
        guard count > 0 else { return .infinity }
        active.removeLast(active.count - count)
        active.sort()
        // Keep the top ⌈recall · count⌉ scores: τ is the smallest of them.
        let keep = Int((Double(recall) * Double(count)).rounded(.up))
        return active[max(0, count - keep)]
    }

    struct Confusion { var recall: Float, precision: Float, share: Float }

    static func confusion(_ scores: [Float], labels: [UInt64], data: PredictorTrainingData, tokens: Range<Int>,
                          threshold: Float) -> Confusion {
        let f = data.neuronCount, words = data.wordsPerToken
        var predicted = 0, active = 0, both = 0
        scores.withUnsafeBufferPointer { s in
            labels.withUnsafeBufferPointer { y in
                var counts: [Int64] = [0, 0, 0]
                for (row, t) in tokens.enumerated() {
                    ember_confusion(s.baseAddress! + row * f, y.baseAddress! + t * words, Int64(f), threshold, &counts)
                    predicted += Int(counts[0]); active += Int(counts[1]); both += Int(counts[2])
                }
            }
        }
        return Confusion(recall: active > 0 ? Float(both) / Float(active) : 1,
                         precision: predicted > 0 ? Float(both) / Float(predicted) : 1,
                         share: Float(predicted) / Float(max(tokens.count * f, 1)))
    }
}
