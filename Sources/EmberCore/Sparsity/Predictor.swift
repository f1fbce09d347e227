import CEmberKernels
import Foundation

/// Per-layer activation predictors, as PowerInfer defines them: for the residual stream x
/// entering a layer's FFN (before its norm), score = fc2 · relu(fc1 · x), and neuron i is
/// computed iff score_i ≥ τ_l. fc1 is r×d (GGUF `blk.N.fc1.weight`, ggml dims [d, r]), fc2 is
/// F×r (`blk.N.fc2.weight`, dims [r, F]), no biases.
///
/// Loads Ember's own files (`general.architecture = ember.predictor`, one τ per layer in
/// `ember.predictor.thresholds`) and PowerInfer model or predictor files (`PWRI` or GGUF magic,
/// τ from `powerinfer.sparse_threshold`, default 0), with weights of any type the kernels know.
///
/// Not thread-safe: the single-token calls share one scratch buffer.
final class PredictorSet {
    struct Layer: Sendable {
        let fc1: WeightMatrix
        let fc2: WeightMatrix
        let threshold: Float
        var rank: Int { fc1.rows }
    }

    /// Per layer; nil for layers without a predictor (they run dense).
    let layers: [Layer?]
    let inputLength: Int
    let neuronCount: Int
    /// What Ember's trainer recorded (zeros/empty for PowerInfer files).
    let metadata: Metadata

    struct Metadata: Sendable, Equatable {
        var sourceModel = ""
        var targetSparsity: Float = 0
        var targetRecall: Float = 0
        /// Per layer, measured on held-out tokens.
        var recall: [Float] = []
        var precision: [Float] = []
        var predictedShare: [Float] = []
        init() {}
    }

    /// Keeps the weights' memory alive: the mapped file or the trainer's buffers.
    private let owner: AnyObject?
    /// Row 0: relu(fc1 · x); row 1: scores.
    private let scratch: Matrix
    /// Two slots for x and relu(h) in a quantized activation format (at most 4 bytes per float).
    private let converted: Matrix

    static let architecture = "ember.predictor"

    convenience init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    /// Reads predictors from a file. Layer numbers (declared or parsed from tensor names),
    /// ranks and sizes are checked against `ReaderLimits`; thresholds and weights must be
    /// finite (a NaN weight makes every score NaN, so no neuron would ever be predicted).
    convenience init(file: GGUFFile) throws {
        let path = file.path
        func malformed(_ detail: String) -> SparsityError { .malformed(path: path, detail: detail) }
        let isEmber = try file.string("general.architecture") == Self.architecture
        // Layers by the declared count (a model's block_count, or ours), else up to the last fc1.
        let architecture = try file.string("general.architecture") ?? ""
        var count = 0, found = 0
        for t in file.tensors {
            let parts = t.name.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4, parts[0] == "blk", parts[2] == "fc1" || parts[2] == "fc2", let l = Int(parts[1]) else { continue }
            guard l >= 0, l < ReaderLimits.layers.range.upperBound else {
                throw LimitError.outOfRange(path: path, what: "layer number of tensor", subject: t.name, value: String(parts[1]),
                                            limit: ReaderLimits.layers)
            }
            count = max(count, l + 1)
            found += 1
        }
        // A model file without predictors (given where predictors were meant) says so plainly.
        guard found > 0 else { throw malformed("no predictor tensors (blk.N.fc1.weight, blk.N.fc2.weight): not a predictor file") }
        if let declared = try file.int(isEmber ? "ember.predictor.layer_count" : "\(architecture).block_count", within: ReaderLimits.layers) {
            count = max(count, declared)
        }
        guard count > 0 else { throw malformed("no predictor tensors (blk.N.fc1.weight)") }
        let sparseThreshold = try file.float("powerinfer.sparse_threshold") ?? 0
        guard sparseThreshold.isFinite else { throw malformed("powerinfer.sparse_threshold is \(sparseThreshold), expected a finite number") }
        var thresholds = [Float](repeating: Float(sparseThreshold), count: count)
        if isEmber {
            guard let perLayer = try file.floatArray("ember.predictor.thresholds"), perLayer.count == count else {
                throw malformed("ember.predictor.thresholds missing or not one per layer")
            }
            if let bad = FiniteValues.firstNonFinite(perLayer) {
                throw malformed("ember.predictor.thresholds holds \(perLayer[bad]) for layer \(bad), expected a finite number")
            }
            thresholds = perLayer
        }
        var d = 0, f = 0
        var layers: [Layer?] = []
        for l in 0..<count {
            guard let i1 = file.tensorInfo("blk.\(l).fc1.weight"), let i2 = file.tensorInfo("blk.\(l).fc2.weight") else {
                layers.append(nil)
                continue
            }
            guard i1.dims.count == 2, i2.dims.count == 2, i1.dims[1] == i2.dims[0],
                  i1.type.byteCount(elements: i1.dims[0]) != nil, i2.type.byteCount(elements: i2.dims[0]) != nil,
                  ember_block_size(Int32(i1.type.rawValue)) > 0, ember_block_size(Int32(i2.type.rawValue)) > 0 else {
                throw malformed("tensors \(i1.name) \(i1.dims) \(i1.type) and \(i2.name) \(i2.dims) \(i2.type) are not [d, r] and [r, F] "
                                + "of a supported type")
            }
            try ReaderLimits.embeddingLength.check(i1.dims[0], what: "input length of tensor", subject: i1.name, file: path)
            try ReaderLimits.predictorRank.check(i1.dims[1], what: "rank of tensor", subject: i1.name, file: path)
            try ReaderLimits.feedForwardLength.check(i2.dims[1], what: "neuron count of tensor", subject: i2.name, file: path)
            if d == 0 { (d, f) = (i1.dims[0], i2.dims[1]) }
            guard i1.dims[0] == d else {
                throw GGUFError.wrongTensorShape(path: path, tensor: i1.name, expected: [d, i1.dims[1]], found: i1.dims)
            }
            guard i2.dims[1] == f else {
                throw GGUFError.wrongTensorShape(path: path, tensor: i2.name, expected: [i2.dims[0], f], found: i2.dims)
            }
            for info in [i1, i2] {
                if let bad = file.firstNonFiniteElement(of: info) {
                    throw GGUFError.nonFiniteValue(path: path, tensor: info.name, index: bad)
                }
            }
            layers.append(Layer(
                fc1: WeightMatrix(name: i1.name, type: i1.type, rows: i1.dims[1], columns: d, data: file.data(of: i1)),
                fc2: WeightMatrix(name: i2.name, type: i2.type, rows: f, columns: i1.dims[1], data: file.data(of: i2)),
                threshold: thresholds[l]))
        }
        var metadata = Metadata()
        if isEmber {
            metadata.sourceModel = try file.string("ember.predictor.source_model") ?? ""
            metadata.targetSparsity = Float(try file.float("ember.predictor.target_sparsity") ?? 0)
            metadata.targetRecall = Float(try file.float("ember.predictor.target_recall") ?? 0)
            metadata.recall = try file.floatArray("ember.predictor.recall") ?? []
            metadata.precision = try file.floatArray("ember.predictor.precision") ?? []
            metadata.predictedShare = try file.floatArray("ember.predictor.predicted_share") ?? []
        }
        self.init(layers: layers, inputLength: d, neuronCount: f, metadata: metadata, owner: file)
    }

    /// Predictors from float weights in memory (the trainer's), stored as `type` (one of
    /// `PredictorTrainingOptions.weightTypes`): fc1[l] is rank×d row-major, fc2[l] is F×rank
    /// row-major; d and every rank are multiples of the type's block.
    convenience init(fc1: [[Float]?], fc2: [[Float]?], ranks: [Int], thresholds: [Float],
                            inputLength d: Int, neuronCount f: Int, type: TensorType = .f16, metadata: Metadata = Metadata()) {
        precondition(PredictorTrainingOptions.weightTypes.contains(type) && d % type.blockSize == 0
                     && ranks.allSatisfy { $0 % type.blockSize == 0 })
        let storage = WeightStorage()
        var layers: [Layer?] = []
        for l in 0..<ranks.count {
            guard let w1 = fc1[l], let w2 = fc2[l] else { layers.append(nil); continue }
            let r = ranks[l]
            precondition(w1.count == r * d && w2.count == f * r)
            layers.append(Layer(fc1: storage.matrix("blk.\(l).fc1.weight", w1, type: type, rows: r, columns: d),
                                fc2: storage.matrix("blk.\(l).fc2.weight", w2, type: type, rows: f, columns: r),
                                threshold: thresholds[l]))
        }
        self.init(layers: layers, inputLength: d, neuronCount: f, metadata: metadata, owner: storage)
    }

    private init(layers: [Layer?], inputLength: Int, neuronCount: Int, metadata: Metadata, owner: AnyObject) {
        self.layers = layers
        self.inputLength = inputLength
        self.neuronCount = neuronCount
        self.metadata = metadata
        self.owner = owner
        let maxRank = layers.compactMap { $0?.rank }.max() ?? 1
        scratch = Matrix(rows: 2, length: max(maxRank, neuronCount))
        converted = Matrix(rows: 2, length: max(inputLength, maxRank) + 256)
    }

    /// Checks that these predictors fit `config`'s model: one per layer at most, each reading
    /// the model's hidden size and scoring its layer's neurons. The error names the file and
    /// the first tensor that does not fit.
    func check(against config: ModelConfig, path: String) throws {
        if layers.count > config.layerCount, let l = layers.indices.last(where: { layers[$0] != nil }), l >= config.layerCount {
            throw SparsityError.malformed(path: path, detail: "tensor blk.\(l).fc1.weight is a predictor of layer \(l), "
                                          + "but the model has \(config.layerCount) layers")
        }
        for case let layer? in layers {
            guard layer.fc1.columns == config.embeddingLength else {
                throw GGUFError.wrongTensorShape(path: path, tensor: layer.fc1.name, expected: [config.embeddingLength, layer.rank],
                                                 found: [layer.fc1.columns, layer.rank])
            }
            guard layer.fc2.rows == config.feedForwardLength else {
                throw GGUFError.wrongTensorShape(path: path, tensor: layer.fc2.name, expected: [layer.rank, config.feedForwardLength],
                                                 found: [layer.rank, layer.fc2.rows])
            }
        }
    }

    // MARK: single token (decode)

    /// score = fc2 · relu(fc1 · x) for one token, F floats into `scores`.
    func scores(layer l: Int, input x: UnsafePointer<Float>, into scores: UnsafeMutablePointer<Float>) {
        let p = layers[l]!
        let h = scratch.pointer
        Self.multiply(p.fc1, x, into: h, buffer: converted.row(0))
        ember_relu(h, Int64(p.rank))
        Self.multiply(p.fc2, h, into: scores, buffer: converted.row(1))
    }

    /// Writes the ids of the neurons predicted active (score ≥ τ), ascending, into `active`
    /// (room for F) and returns how many there are. Layers without a predictor list all neurons.
    func activeNeurons(layer l: Int, input x: UnsafePointer<Float>, into active: UnsafeMutablePointer<Int32>) -> Int {
        guard let p = layers[l] else {
            for i in 0..<neuronCount { active[i] = Int32(i) }
            return neuronCount
        }
        let s = scratch.row(1)
        scores(layer: l, input: x, into: s)
        return Int(ember_threshold_indices(s, Int64(neuronCount), p.threshold, active))
    }

    /// `activeNeurons` with both products' rows split over `pool` (for models whose predictor
    /// matrices are large enough that one thread cannot read them at full bandwidth; nil: the
    /// calling thread alone).
    func activeNeurons(layer l: Int, input x: UnsafePointer<Float>, into active: UnsafeMutablePointer<Int32>,
                              pool: ThreadPool?) -> Int {
        guard let p = layers[l], let pool else { return activeNeurons(layer: l, input: x, into: active) }
        let h = scratch.row(0), s = scratch.row(1)
        for (w, v, y, slot) in [(p.fc1, UnsafePointer(x), h, 0), (p.fc2, UnsafePointer(h), s, 1)] {
            // Convert once, then every thread multiplies its rows.
            var source = UnsafeRawPointer(v)
            if w.activationType != .f32 {
                let bytes = UnsafeMutableRawPointer(converted.row(slot))
                ember_quantize_activations(Int32(w.activationType.rawValue), v, bytes, Int64(w.columns))
                source = UnsafeRawPointer(bytes)
            }
            pool.parallelFor(w.rows, granularity: 16) { rows in
                w.multiply(source, into: y + rows.lowerBound, rows: rows)
            }
            if slot == 0 { ember_relu(h, Int64(p.rank)) }
        }
        return Int(ember_threshold_indices(s, Int64(neuronCount), p.threshold, active))
    }

    /// y = W · v, converting v to W's activation format first when it needs one.
    private static func multiply(_ w: WeightMatrix, _ v: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                                 buffer: UnsafeMutablePointer<Float>) {
        let act = w.activationType
        if act == .f32 {
            w.multiply(UnsafeRawPointer(v), into: y, rows: 0..<w.rows)
        } else {
            let bytes = UnsafeMutableRawPointer(buffer)
            ember_quantize_activations(Int32(act.rawValue), v, bytes, Int64(w.columns))
            w.multiply(UnsafeRawPointer(bytes), into: y, rows: 0..<w.rows)
        }
    }

    // MARK: batches (prefill, perplexity, evaluation)

    /// Scores of `count` tokens (rows of `inputs`) into rows of `scores` (length F), the rows
    /// of each product split over `pool` (nil: on the calling thread).
    func scores(layer l: Int, inputs: Matrix, count: Int, into scores: Matrix, pool: ThreadPool?) {
        let p = layers[l]!
        precondition(inputs.length == inputLength && scores.length == neuronCount && count <= inputs.rows && count <= scores.rows)
        let hidden = Matrix(rows: count, length: p.rank)
        Self.multiply(p.fc1, inputs, count: count, into: hidden, pool: pool)
        ember_relu(hidden.pointer, Int64(count * p.rank))
        Self.multiply(p.fc2, hidden, count: count, into: scores, pool: pool)
    }

    /// Masks for `count` tokens: masks[t][i] = 1 if neuron i is predicted active for token t,
    /// else 0, so multiplying act(gate) by it makes unpredicted neurons contribute nothing.
    /// Layers without a predictor get all ones. Returns the number of active entries.
    @discardableResult
    func activeMasks(layer l: Int, inputs: Matrix, count: Int, into masks: Matrix, pool: ThreadPool?) -> Int {
        precondition(masks.length == neuronCount && count <= masks.rows)
        guard let p = layers[l] else {
            masks.pointer.update(repeating: 1, count: count * neuronCount)
            return count * neuronCount
        }
        scores(layer: l, inputs: inputs, count: count, into: masks, pool: pool)
        return Int(ember_threshold_mask(masks.pointer, Int64(count * neuronCount), p.threshold))
    }

    /// out[t] = W · input[t] for t < count, W's rows split over the pool.
    private static func multiply(_ w: WeightMatrix, _ input: Matrix, count: Int, into out: Matrix, pool: ThreadPool?) {
        let act = w.activationType
        var source = UnsafeRawPointer(input.pointer), stride = input.length * 4
        var converted: ActivationBuffer?
        if act != .f32 {
            let buffer = ActivationBuffer(type: act, length: w.columns, capacity: count)
            for t in 0..<count { buffer.store(input.row(t), at: t) }
            (source, stride, converted) = (UnsafeRawPointer(buffer.bytes), buffer.stride, buffer)
        }
        withExtendedLifetime(converted) {
            let body = { (rows: Range<Int>) in
                w.multiply(source, stride: stride, count: count, into: out.pointer, ldy: out.length, rows: rows)
            }
            if let pool { pool.parallelFor(w.rows, granularity: 16, body) } else { body(0..<w.rows) }
        }
    }

    // MARK: writing

    /// Writes Ember's predictor file: per-layer thresholds and the trainer's figures in
    /// metadata, tensors in the types they are held in.
    func write(to path: String) throws {
        guard let storage = owner as? WeightStorage else {
            throw SparsityError.mismatch("only predictors built in memory can be written (\(path))")
        }
        var writer = GGUFWriter()
        writer.set("general.architecture", .string(Self.architecture))
        writer.set("ember.predictor.source_model", .string(metadata.sourceModel))
        writer.set("ember.predictor.layer_count", .uint32(UInt32(layers.count)))
        writer.set("ember.predictor.input_length", .uint32(UInt32(inputLength)))
        writer.set("ember.predictor.neuron_count", .uint32(UInt32(neuronCount)))
        writer.set("ember.predictor.target_sparsity", .float32(metadata.targetSparsity))
        writer.set("ember.predictor.target_recall", .float32(metadata.targetRecall))
        writer.set("ember.predictor.ranks", .array(.uint32, layers.map { .uint32(UInt32($0?.rank ?? 0)) }))
        writer.set("ember.predictor.thresholds", .array(.float32, layers.map { .float32($0?.threshold ?? 0) }))
        for (key, values) in [("recall", metadata.recall), ("precision", metadata.precision), ("predicted_share", metadata.predictedShare)] {
            writer.set("ember.predictor.\(key)", .array(.float32, values.map { .float32($0) }))
        }
        for case let p? in layers {
            for w in [p.fc1, p.fc2] {
                writer.addTensor(w.name, type: w.type, dims: [w.columns, w.rows],
                                 bytes: Array(UnsafeRawBufferPointer(start: w.data, count: w.byteCount)))
            }
        }
        withExtendedLifetime(storage) {}
        try writer.write(to: path)
    }
}

/// Weight bytes owned in memory, for predictors that did not come from a file.
final class WeightStorage {
    private var buffers: [UnsafeMutableRawPointer] = []

    func matrix(_ name: String, _ floats: [Float], type: TensorType, rows: Int, columns: Int) -> WeightMatrix {
        let rowBytes = type.byteCount(elements: columns)!
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: max(rows * rowBytes, 64), alignment: 64)
        buffers.append(bytes)
        floats.withUnsafeBufferPointer { f in
            for r in 0..<rows {
                ember_quantize_row(Int32(type.rawValue), f.baseAddress! + r * columns, bytes + r * rowBytes, Int64(columns))
            }
        }
        return WeightMatrix(name: name, type: type, rows: rows, columns: columns, data: UnsafeRawPointer(bytes))
    }

    deinit { buffers.forEach { $0.deallocate() } }
}
