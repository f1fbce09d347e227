import CEmberKernels

/// Float storage for `rows` vectors of `length` floats, 64-byte aligned.
public final class Matrix: @unchecked Sendable {
    public let rows: Int
    public let length: Int
    public let pointer: UnsafeMutablePointer<Float>
    private let owned: Bool

    public init(rows: Int, length: Int) {
        self.rows = rows
        self.length = length
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(rows * length, 16) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(rows * length, 16))
        pointer.initialize(repeating: 0, count: max(rows * length, 16))
        owned = true
    }

    /// Rows `range` of another matrix, sharing its memory (the other must outlive this one).
    public init(rowsOf other: Matrix, _ range: Range<Int>) {
        precondition(range.upperBound <= other.rows)
        rows = range.count
        length = other.length
        pointer = other.row(range.lowerBound)
        owned = false
    }

    deinit { if owned { pointer.deallocate() } }

    @inline(__always)
    public func row(_ r: Int) -> UnsafeMutablePointer<Float> { pointer + r * length }
}

/// The working memory of a forward pass over up to `maxTokens` tokens and the operations a
/// transformer block is written with. Architecture files (Llama.swift, Gemma3.swift) describe
/// their block as calls to these; each operation splits its work over the thread pool.
public final class ForwardPass: @unchecked Sendable {
    public let config: ModelConfig
    public let pool: ThreadPool
    public let maxTokens: Int

    /// Tokens in the current batch and their positions.
    public private(set) var tokenCount = 0
    public private(set) var positions: [Int] = []

    // Activations, one row per token.
    public let x: Matrix          // residual stream
    public let normed: Matrix     // normalised input of the next projection
    public let query: Matrix
    public let key: Matrix
    public let value: Matrix
    public let attention: Matrix  // attention output, input of the output projection
    public let projected: Matrix  // output of a projection back to the embedding length
    public let gate: Matrix
    public let up: Matrix

    /// Per-thread attention scores (one context's worth each).
    private let scores: [Matrix]
    /// Rope angles per token for the global and the sliding-window rope.
    /// Rope angles of the batch's tokens (row t: token t), for devices that rotate themselves.
    let ropeCos: Matrix, ropeSin: Matrix
    private let slidingCos: Matrix, slidingSin: Matrix

    /// Activations converted for integer dots: shared ones for batches (each thread converts
    /// some tokens), and per-thread ones for single tokens (each converts the whole vector,
    /// which is cheaper than a second barrier).
    private let sharedActivations = ActivationBuffers()
    private let threadActivations: [ActivationBuffers]

    public init(config: ModelConfig, pool: ThreadPool, maxTokens: Int, contextCapacity: Int) {
        self.config = config
        self.pool = pool
        self.maxTokens = maxTokens
        let d = config.embeddingLength
        x = Matrix(rows: maxTokens, length: d)
        normed = Matrix(rows: maxTokens, length: d)
        query = Matrix(rows: maxTokens, length: config.queryLength)
        key = Matrix(rows: maxTokens, length: config.kvLength)
        value = Matrix(rows: maxTokens, length: config.valueLength)
        attention = Matrix(rows: maxTokens, length: config.headCount * config.valueDimension)
        projected = Matrix(rows: maxTokens, length: d)
        gate = Matrix(rows: maxTokens, length: config.feedForwardLength)
        up = Matrix(rows: maxTokens, length: config.feedForwardLength)
        scores = (0..<pool.threadCount).map { _ in Matrix(rows: 1, length: contextCapacity) }
        let half = config.rope.dimensions / 2
        ropeCos = Matrix(rows: maxTokens, length: half)
        ropeSin = Matrix(rows: maxTokens, length: half)
        slidingCos = Matrix(rows: maxTokens, length: half)
        slidingSin = Matrix(rows: maxTokens, length: half)
        threadActivations = (0..<pool.threadCount).map { _ in ActivationBuffers() }
    }

    // MARK: batch set-up

    /// Starts a batch: embeds `tokens` at positions `start...` into `x` and computes the rope
    /// angles of those positions.
    public func begin(tokens: ArraySlice<Int32>, start: Int, embedding: WeightMatrix) {
        precondition(tokens.count <= maxTokens)
        tokenCount = tokens.count
        positions = (0..<tokens.count).map { start + $0 }
        for (t, token) in tokens.enumerated() {
            embedding.dequantizeRow(Int(token), into: x.row(t))
            if config.embeddingScale != 1 {
                VectorKernels.scale(x.row(t), by: config.embeddingScale, config.embeddingLength)
            }
        }
        for t in 0..<tokenCount {
            config.rope.angles(at: positions[t], cos: ropeCos.row(t), sin: ropeSin.row(t))
            config.slidingRope?.angles(at: positions[t], cos: slidingCos.row(t), sin: slidingSin.row(t))
        }
    }

    /// Runs `body(t)` for every token of the batch, split over threads (inline for one token).
    public func forEachToken(_ body: (Int) -> Void) {
        if tokenCount == 1 {
            body(0)
        } else {
            pool.parallelFor(tokenCount) { range in range.forEach(body) }
        }
    }

    // MARK: operations

    /// output[t] = rmsNorm(input[t]) · weight.
    public func rmsNorm(_ input: Matrix, _ weight: FloatVector, into output: Matrix) {
        forEachToken { t in
            VectorKernels.rmsNorm(input.row(t), weight: weight.pointer, epsilon: config.rmsEpsilon, output.row(t), input.length)
        }
    }

    /// x[t] += y[t].
    public func addResidual(_ y: Matrix) {
        forEachToken { t in VectorKernels.add(y.row(t), into: x.row(t), config.embeddingLength) }
    }

    /// output[t] = W · input[t] for each (W, output) pair and the first `count` rows (default:
    /// the batch); all share the same input, converted once per activation format.
    public func linear(_ input: Matrix, _ products: [(WeightMatrix, Matrix)], count: Int? = nil) {
        let n = input.length
        let tokenCount = count ?? self.tokenCount
        if tokenCount == 1 {
            pool.run { thread in
                var converted: [Int: ActivationBuffer] = [:]
                for (w, output) in products {
                    let activations: ActivationBuffer
                    if let done = converted[Int(w.activationType.rawValue)] {
                        activations = done
                    } else {
                        activations = threadActivations[thread].buffer(type: w.activationType, length: n, capacity: 1)
                        activations.store(input.row(0), at: 0)
                        converted[Int(w.activationType.rawValue)] = activations
                    }
                    let rows = ThreadPool.share(of: w.rows, thread: thread, threads: pool.threadCount, granularity: 16)
                    if !rows.isEmpty {
                        w.multiply(activations.vector(0), into: output.row(0) + rows.lowerBound, rows: rows)
                    }
                }
            }
            return
        }
        var buffers: [ActivationBuffer] = []
        for (w, _) in products where !buffers.contains(where: { $0.type == w.activationType }) {
            buffers.append(sharedActivations.buffer(type: w.activationType, length: n, capacity: maxTokens))
        }
        pool.parallelFor(tokenCount) { tokens in
            for buffer in buffers {
                for t in tokens { buffer.store(input.row(t), at: t) }
            }
        }
        pool.run { thread in
            for (w, output) in products {
                let activations = buffers.first { $0.type == w.activationType }!
                let rows = ThreadPool.share(of: w.rows, thread: thread, threads: pool.threadCount, granularity: 16)
                if !rows.isEmpty {
                    w.multiply(activations.bytes, stride: activations.stride, count: tokenCount,
                               into: output.pointer, ldy: output.length, rows: rows)
                }
            }
        }
    }

    /// output[t] += bias.
    public func addBias(_ bias: FloatVector?, to output: Matrix) {
        guard let bias else { return }
        forEachToken { t in VectorKernels.add(bias.pointer, into: output.row(t), output.length) }
    }

    /// RMS-normalises each head of `m` (heads of `headLength`) with a shared weight (q/k norm).
    public func headNorm(_ m: Matrix, _ weight: FloatVector?, headLength: Int) {
        guard let weight else { return }
        forEachToken { t in
            for h in 0..<(m.length / headLength) {
                let head = m.row(t) + h * headLength
                VectorKernels.rmsNorm(head, weight: weight.pointer, epsilon: config.rmsEpsilon, head, headLength)
            }
        }
    }

    /// Rotates q and k of every token by its position and stores k and v in the cache.
    public func ropeAndStore(layer: Int, cache: KVCache) {
        let sliding = config.slidingLayers[layer]
        let rope = config.rope(forLayer: layer)
        let cos = sliding && config.slidingRope != nil ? slidingCos : ropeCos
        let sin = sliding && config.slidingRope != nil ? slidingSin : ropeSin
        let hd = config.headDimension
        forEachToken { t in
            for h in 0..<config.headCount {
                rope.rotate(query.row(t) + h * hd, cos: cos.row(t), sin: sin.row(t))
            }
            for h in 0..<config.kvHeadCount {
                rope.rotate(key.row(t) + h * hd, cos: cos.row(t), sin: sin.row(t))
            }
            cache.key(layer: layer, position: positions[t]).update(from: key.row(t), count: config.kvLength)
            cache.value(layer: layer, position: positions[t]).update(from: value.row(t), count: config.valueLength)
        }
    }

    /// Causal attention of every query head over the cached positions (within the sliding
    /// window on sliding layers), written to `attention`.
    public func attend(layer: Int, cache: KVCache) {
        let hd = config.headDimension, vd = config.valueDimension
        let groupSize = config.headCount / config.kvHeadCount
        let window = config.slidingLayers[layer] ? config.slidingWindow : nil
        let scale = config.attentionScale
        let work = tokenCount * config.headCount
        pool.run { thread in
            let s = scores[thread].pointer
            for item in ThreadPool.share(of: work, thread: thread, threads: pool.threadCount) {
                let t = item / config.headCount, h = item % config.headCount
                let position = positions[t]
                let first = window.map { max(0, position - $0 + 1) } ?? 0
                let g = h / groupSize
                ember_attention_head(query.row(t) + h * hd,
                                     cache.key(layer: layer, position: first) + g * hd, Int64(cache.keyLength),
                                     cache.value(layer: layer, position: first) + g * vd, Int64(cache.valueLength),
                                     Int64(position - first + 1), Int64(hd), Int64(vd), scale,
                                     s, attention.row(t) + h * vd)
            }
        }
    }

    /// The feed-forward block on `normed`, result in `projected`: down(act(gate) · up), or
    /// down(act(up)) for ungated FFNs. With an observer set, it sees act(gate) and up before
    /// they are multiplied.
    public func feedForward(_ w: LayerWeights, layer: Int) {
        if let sparsity {
            sparsity.feedForward(w, layer: layer, pass: self)
            return
        }
        let n = config.feedForwardLength
        let activation = config.activation
        let gated = w.gate != nil
        if let gateWeights = w.gate {
            linear(normed, [(gateWeights, gate), (w.up, up)])
        } else {
            linear(normed, [(w.up, gate)])
        }
        if let observer = feedForwardObserver {
            forEachToken { t in VectorKernels.gatedActivation(activation, gate: gate.row(t), up: nil, gate.row(t), n) }
            observer(FeedForwardObservation(layer: layer, tokenCount: tokenCount, input: x, activated: gate,
                                            up: gated ? up : nil))
            if gated { forEachToken { t in VectorKernels.multiply(gate.row(t), by: up.row(t), n) } }
        } else {
            forEachToken { t in
                VectorKernels.gatedActivation(activation, gate: gate.row(t), up: gated ? up.row(t) : nil, gate.row(t), n)
            }
        }
        linear(gate, [(w.down, projected)])
    }

    /// Called with every layer's FFN activations (profiling, predictor training); nil in
    /// normal runs.
    public var feedForwardObserver: ((FeedForwardObservation) -> Void)?

    /// Computes the FFN sparsely instead (see Sparsity/); nil runs it densely.
    public var sparsity: FeedForwardSparsity?

    /// Runs some layers' attention (single-token batches) and the output head on a device;
    /// nil: all on the CPU.
    public var denseOffload: DenseOffload?
}

/// A device that runs the attention block of some layers for one token at a time, and maybe
/// the output head. The CPU's
/// KV cache stays complete: the device stores the token's key and value there too, and hears of
/// every cache row the CPU writes (prompt batches) so its own copy can catch up.
public protocol DenseOffload: AnyObject {
    /// The attention block of the batch's single token at `layer` (norm, q/k/v, rope, cache,
    /// attention, output, residual: `pass.x` += its output). False when this layer is not
    /// on the device (or the device failed): the CPU then does it, nothing having changed.
    func attention(_ w: LayerWeights, layer: Int, pass: ForwardPass, cache: KVCache) -> Bool
    /// The CPU wrote `cache` rows `positions` of `layer`.
    func cacheWritten(layer: Int, positions: Range<Int>)
    /// Final norm and output head of residual `x` into `logits`; false when the head is not on
    /// the device (or it failed): the CPU then computes it.
    func outputHead(_ x: UnsafePointer<Float>, into logits: UnsafeMutablePointer<Float>) -> Bool
}

/// A replacement for the dense FFN: reads `pass.normed` (and `pass.x`, the pre-norm input)
/// for the batch's tokens and writes the FFN output to `pass.projected`.
public protocol FeedForwardSparsity: AnyObject {
    func feedForward(_ w: LayerWeights, layer: Int, pass: ForwardPass)
}

/// One batch of one layer's FFN, as the observer sees it. Rows 0..<tokenCount are valid.
public struct FeedForwardObservation {
    public let layer: Int
    public let tokenCount: Int
    /// The residual stream entering the FFN, before its norm (what predictors read).
    public let input: Matrix
    /// act(gate) per neuron (ungated FFNs: act(up)).
    public let activated: Matrix
    /// The up projection of gated FFNs.
    public let up: Matrix?
}
