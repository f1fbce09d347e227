import CEmberKernels

/// The CPU executor of a forward pass over up to `maxTokens` tokens: its working memory and
/// the operations architecture files write their blocks with (norm, attention, feedForward,
/// addResidual). Each operation splits its work over the thread pool.
///
/// Two operations may run elsewhere, decided outside the architectures: `attention` of a
/// single token on a device that holds the layer (`attentionOffload`), and `feedForward`
/// sparsely, on the CPU or split with a device (`sparsity`).
final class ForwardPass {
    let config: ModelConfig
    let pool: ThreadPool
    let cache: KVCache
    let maxTokens: Int

    /// Tokens in the current batch, their positions, and the cache each one belongs to: `cache`
    /// for a single sequence; several sequences' caches in a batch of `begin(rows:)`.
    private(set) var tokenCount = 0
    private(set) var positions: [Int] = []
    private(set) var rowCaches: [KVCache] = []
    /// Per row, whether its attention splits its keys over the threads (see `BatchRow.splitsKeys`).
    private(set) var splitsKeys: [Bool] = []
    /// Whether every row of the batch belongs to `cache` (device offload serves only that one).
    private(set) var isSingleSequence = true

    // Activations, one row per token.
    let x: Matrix          // residual stream
    let normed: Matrix     // normalised input of the next projection
    let query: Matrix
    let key: Matrix
    let value: Matrix
    let attended: Matrix   // attention output, input of the output projection
    let projected: Matrix  // output of a projection back to the embedding length
    let parallel: Matrix   // a second such output, for blocks that run attention and FFN side by side
    let gate: Matrix
    let up: Matrix

    /// 0, 1, … for the dense column gather of a neuron-major down.
    private var allNeurons: [Int32] = []
    /// Scratch of the attention kernel (per thread, and the partials of a split row).
    private let attentionWorkspace: AttentionWorkspace
    /// The cos/sin of each rope of the model at the batch's positions (row t: token t).
    private let ropeTables: [(rope: Rope, cos: Matrix, sin: Matrix)]

    /// Activations converted for integer dots: shared ones for batches (each thread converts
    /// some tokens), and per-thread ones for single tokens (each converts the whole vector,
    /// which is cheaper than a second barrier).
    private let sharedActivations = ActivationBuffers()
    private let threadActivations: [ActivationBuffers]

    /// Sees every layer's FFN activations (profiling, predictor training); nil in normal runs.
    var feedForwardObserver: ((FeedForwardObservation) -> Void)?
    /// Computes the FFN sparsely instead (Sparsity/); nil runs it densely.
    var sparsity: FeedForwardSparsity?
    /// Runs some layers' attention and the output head on a device; nil: all on the CPU.
    var offload: DenseOffload?

    init(config: ModelConfig, ropes: [Rope], pool: ThreadPool, cache: KVCache, maxTokens: Int) {
        self.config = config
        self.pool = pool
        self.cache = cache
        self.maxTokens = maxTokens
        let d = config.embeddingLength
        x = Matrix(rows: maxTokens, length: d)
        normed = Matrix(rows: maxTokens, length: d)
        query = Matrix(rows: maxTokens, length: config.queryLength)
        key = Matrix(rows: maxTokens, length: config.kvLength)
        value = Matrix(rows: maxTokens, length: config.valueLength)
        attended = Matrix(rows: maxTokens, length: config.attentionOutputLength)
        projected = Matrix(rows: maxTokens, length: d)
        parallel = Matrix(rows: maxTokens, length: d)
        gate = Matrix(rows: maxTokens, length: config.feedForwardLength)
        up = Matrix(rows: maxTokens, length: config.feedForwardLength)
        attentionWorkspace = AttentionWorkspace(shape: KVCache.attentionShape(config, scale: 1), threads: pool.threadCount)
        ropeTables = ropes.map { ($0, Matrix(rows: maxTokens, length: $0.dimensions / 2), Matrix(rows: maxTokens, length: $0.dimensions / 2)) }
        threadActivations = (0..<pool.threadCount).map { _ in ActivationBuffers() }
    }

    // MARK: batch set-up

    /// Starts a batch: embeds `tokens` at positions `cache.count...` into `x` and computes the
    /// rope angles of those positions.
    func begin(tokens: ArraySlice<Int32>, embedding: Embedding) {
        let start = cache.count
        begin(rows: tokens.enumerated().map { BatchRow(token: $1, cache: cache, position: start + $0) }, embedding: embedding)
    }

    /// Starts a batch of rows from any sequences: row t embeds `rows[t].token` at its position,
    /// and its key and value go to its cache (which holds at most `cache.capacity` positions).
    func begin(rows: [BatchRow], embedding: Embedding) {
        precondition(rows.count <= maxTokens)
        precondition(rows.allSatisfy { $0.position < $0.cache.capacity && $0.cache.capacity <= cache.capacity },
                     "a row beyond its cache, or a cache larger than the pass's scratch")
        tokenCount = rows.count
        positions = rows.map(\.position)
        rowCaches = rows.map(\.cache)
        isSingleSequence = rows.allSatisfy { $0.cache === cache }
        var rowsPerCache: [ObjectIdentifier: Int] = [:]
        for row in rows { rowsPerCache[ObjectIdentifier(row.cache), default: 0] += 1 }
        splitsKeys = rows.map { $0.splitsKeys ?? (rowsPerCache[ObjectIdentifier($0.cache)] == 1) }
        let d = config.embeddingLength
        for (t, token) in rows.lazy.map(\.token).enumerated() {
            embedding.tokens.dequantizeRow(Int(token), into: x.row(t))
            if embedding.scale != 1 { VectorKernels.scale(x.row(t), by: embedding.scale, d) }
            if let table = embedding.positions {
                table.dequantizeRow(positions[t] + embedding.positionOffset, into: normed.row(t))
                VectorKernels.add(normed.row(t), into: x.row(t), d)
            }
        }
        for table in ropeTables {
            for t in 0..<tokenCount { table.rope.angles(at: positions[t], cos: table.cos.row(t), sin: table.sin.row(t)) }
        }
    }

    /// The batch's angles of `rope` (one of the model's).
    func ropeAngles(_ rope: Rope) -> (cos: Matrix, sin: Matrix) {
        let table = ropeTables.first { $0.rope == rope }!
        return (table.cos, table.sin)
    }

    /// Runs `body(t)` for every token of the batch, split over threads (inline for one token).
    func forEachToken(_ body: (Int) -> Void) {
        if tokenCount == 1 {
            body(0)
        } else {
            pool.parallelFor(tokenCount) { range in range.forEach(body) }
        }
    }

    // MARK: operations of a block

    /// output[t] = norm(input[t]).
    func norm(_ n: Norm, _ input: Matrix, into output: Matrix) {
        let length = input.length
        forEachToken { t in Self.normalize(n, input.row(t), into: output.row(t), length) }
    }

    /// x[t] += y[t].
    func addResidual(_ y: Matrix) {
        forEachToken { t in VectorKernels.add(y.row(t), into: x.row(t), config.embeddingLength) }
    }

    /// Self-attention of the batch on `input` (normed), into `output`; keys and values of the
    /// batch join the cache of `layer`. A single token runs on the device when it holds the layer.
    func attention(_ a: Attention, layer: Int, input: Matrix, into output: Matrix) {
        if tokenCount == 1, isSingleSequence, let offload, offload.attention(a, layer: layer, input: input.row(0), output: output.row(0), pass: self) {
            return
        }
        linear(input, [(a.query.weight, query), (a.key.weight, key), (a.value.weight, value)])
        addBias(a.query.bias, to: query)
        addBias(a.key.bias, to: key)
        addBias(a.value.bias, to: value)
        if let norm = a.queryNorm { headNorm(query, norm) }
        if let norm = a.keyNorm { headNorm(key, norm) }
        rotateAndStore(a.rope, layer: layer)
        if isSingleSequence { offload?.cacheWritten(layer: layer, positions: positions[0]..<positions[0] + tokenCount) }
        attend(layer: layer, window: a.window, scale: a.scale)
        linear(attended, [(a.output.weight, output)])
        addBias(a.output.bias, to: output)
    }

    /// The FFN of `layer` on `input` (normed), into `output`: down(act(gate) · up), or
    /// down(act(up)) without a gate; sparsely when `sparsity` is set.
    func feedForward(_ f: FeedForward, layer: Int, input: Matrix, into output: Matrix) {
        if let sparsity {
            sparsity.feedForward(f, layer: layer, input: input, into: output, pass: self)
            return
        }
        let n = f.neuronCount
        if let gateWeights = f.gate {
            linear(input, [(gateWeights.weight, gate), (f.up.weight, up)])
            addBias(gateWeights.bias, to: gate)
            addBias(f.up.bias, to: up)
        } else {
            linear(input, [(f.up.weight, gate)])
            addBias(f.up.bias, to: gate)
        }
        let gated = f.gate != nil
        if let observer = feedForwardObserver {
            forEachToken { t in
                VectorKernels.gatedActivation(f.activation, gate: gate.row(t), up: nil, gate.row(t), n)
                // The observer sees the up factor as it multiplies: dReLU's rectified.
                if gated, f.activation.rectifiesUp { ember_relu(up.row(t), Int64(n)) }
            }
            observer(FeedForwardObservation(layer: layer, tokenCount: tokenCount, input: x, activated: gate,
                                            up: gated ? up : nil))
            if gated { forEachToken { t in VectorKernels.multiply(gate.row(t), by: up.row(t), n) } }
        } else {
            forEachToken { t in
                VectorKernels.gatedActivation(f.activation, gate: gate.row(t), up: gated ? up.row(t) : nil, gate.row(t), n)
            }
        }
        down(f.down, gate, into: output)
    }

    /// output[t] = down · activations[t] + down's bias, for the batch. A neuron-major down
    /// (PowerInfer's files) is the column gather over every neuron.
    func down(_ projection: DownProjection, _ activations: Matrix, into output: Matrix) {
        switch projection {
        case .rowMajor(let matrix):
            linear(activations, [(matrix.weight, output)])
        case .neuronMajor(let matrix, _):
            if allNeurons.count != matrix.rows { allNeurons = Array(0..<Int32(matrix.rows)) }
            allNeurons.withUnsafeBufferPointer { ids in
                SparseFeedForward.dense(pool: pool, down: matrix, neurons: ids.baseAddress!, activations: activations.pointer,
                                        activationStride: activations.length, tokens: tokenCount,
                                        output: output.pointer, outputStride: output.length)
            }
        }
        addBias(projection.bias, to: output)
    }

    /// Final norm and output head for the batch rows `rows`, logits to `output` rows 0...;
    /// a single row runs on the device when it holds the head.
    func outputHead(_ head: OutputHead, rows: some Collection<Int>, into output: Matrix) {
        for (i, t) in rows.enumerated() {
            Self.normalize(head.norm, x.row(t), into: normed.row(i), config.embeddingLength)
        }
        if rows.count == 1, isSingleSequence, let offload, offload.outputHead(head, normed: normed.row(0), into: output.row(0)) {
            return
        }
        linear(normed, [(head.output.weight, output)], count: rows.count)
        if let bias = head.output.bias {
            for i in 0..<rows.count { VectorKernels.add(bias.pointer, into: output.row(i), output.length) }
        }
    }

    // MARK: the steps they are made of

    static func normalize(_ n: Norm, _ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, _ length: Int) {
        switch n.kind {
        case .rms:
            VectorKernels.rmsNorm(input, weight: n.weight.pointer, epsilon: n.epsilon, output, length)
            if let bias = n.bias { VectorKernels.add(bias.pointer, into: output, length) }
        case .layer:
            VectorKernels.layerNorm(input, weight: n.weight.pointer, bias: n.bias?.pointer, epsilon: n.epsilon, output, length)
        }
    }

    /// output[t] = W · input[t] for each (W, output) pair and the first `count` rows (default:
    /// the batch); all share the same input, converted once per activation format. Whichever
    /// kernels the row count calls for, each row gets the bits it would get alone.
    func linear(_ input: Matrix, _ products: [(WeightMatrix, Matrix)], count: Int? = nil) {
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
                guard !rows.isEmpty else { continue }
                w.multiply(activations.bytes, stride: activations.stride, count: tokenCount,
                           into: output.pointer, ldy: output.length, rows: rows)
            }
        }
    }

    /// output[t] += bias.
    func addBias(_ bias: FloatVector?, to output: Matrix) {
        guard let bias else { return }
        forEachToken { t in VectorKernels.add(bias.pointer, into: output.row(t), bias.count) }
    }

    /// Normalises each head of `m` (heads of the norm's length) with the norm's shared weight.
    private func headNorm(_ m: Matrix, _ n: Norm) {
        let headLength = n.weight.count
        forEachToken { t in
            for h in 0..<(m.length / headLength) {
                let head = m.row(t) + h * headLength
                Self.normalize(n, head, into: head, headLength)
            }
        }
    }

    /// Rotates q and k of every token by its position (when there is a rope) and stores k and
    /// v in the row's cache (rounded to its type).
    private func rotateAndStore(_ rope: Rope?, layer: Int) {
        let hd = config.headDimension
        let angles = rope.map { ropeAngles($0) }
        forEachToken { t in
            if let rope, let angles {
                for h in 0..<config.headCount {
                    rope.rotate(query.row(t) + h * hd, cos: angles.cos.row(t), sin: angles.sin.row(t))
                }
                for h in 0..<config.kvHeadCount {
                    rope.rotate(key.row(t) + h * hd, cos: angles.cos.row(t), sin: angles.sin.row(t))
                }
            }
            rowCaches[t].storeKey(key.row(t), layer: layer, position: positions[t])
            rowCaches[t].storeValue(value.row(t), layer: layer, position: positions[t])
        }
    }

    /// Causal attention of every query head over the cached positions of its row's sequence
    /// (the last `window` of them when there is a window), written to `attended`. Consecutive
    /// rows of one sequence go to the kernel together; the rows that split their keys (decode
    /// steps of a batch of sequences) go together in one call.
    private func attend(layer: Int, window: Int?, scale: Float) {
        let shape = KVCache.attentionShape(config, scale: scale)
        var decodeRows: [AttentionKernel.DecodeRow] = []
        var start = 0
        while start < tokenCount {
            let cache = rowCaches[start]
            if splitsKeys[start] {
                decodeRows.append(.init(cache: cache.attentionView(layer: layer), query: UnsafePointer(query.row(start)),
                                        position: positions[start], output: attended.row(start)))
                start += 1
                continue
            }
            var end = start + 1
            while end < tokenCount, rowCaches[end] === cache, !splitsKeys[end] { end += 1 }
            AttentionKernel.run(pool: pool, shape: shape, cache: cache.attentionView(layer: layer),
                                queries: query.row(start), queryStride: query.length, positions: Array(positions[start..<end]),
                                window: window, output: attended.row(start), outputStride: attended.length,
                                workspace: attentionWorkspace, splitsKeys: false)
            start = end
        }
        AttentionKernel.decode(pool: pool, shape: shape, rows: decodeRows, window: window, workspace: attentionWorkspace)
    }
}

/// One row of a batch: a token, the cache of its sequence, its position there, and how its
/// attention runs.
struct BatchRow {
    let token: Int32
    let cache: KVCache
    let position: Int
    /// How the row's attention runs: alone with its keys split over the threads (true: how a
    /// sequence alone runs a one-row step), or in blocks of rows with its sequence's other rows
    /// of the batch (false: a prompt chunk). The two round differently, so a row of a batch of
    /// several sequences is pinned to what its sequence alone does. nil: split when the row is
    /// its sequence's only one in the batch.
    var splitsKeys: Bool? = nil
}

/// A device that runs some layers' attention for one token at a time, and maybe the output
/// head. The CPU's KV cache stays complete: the device writes the token's key and value there
/// too, and hears of every cache row the CPU writes (prompt batches) so its own copy can catch up.
protocol DenseOffload: AnyObject {
    /// The attention of the batch's single token at `layer`: normed `input` → `output`, its key
    /// and value stored in `pass.cache`. False when the layer is not on the device (or the
    /// device failed): the CPU then computes it, nothing having changed.
    func attention(_ a: Attention, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                   pass: ForwardPass) -> Bool
    /// The CPU wrote cache rows `positions` of `layer`.
    func cacheWritten(layer: Int, positions: Range<Int>)
    /// The output head on the final-normed `normed` into `logits`; false when the head is not on
    /// the device (or it failed): the CPU then computes it.
    func outputHead(_ head: OutputHead, normed: UnsafePointer<Float>, into logits: UnsafeMutablePointer<Float>) -> Bool
}

/// A replacement for the dense FFN: reads `input` (and `pass.x`, the residual stream before the
/// FFN's norm) for the batch's tokens and writes the FFN output to `output`.
protocol FeedForwardSparsity: AnyObject {
    func feedForward(_ f: FeedForward, layer: Int, input: Matrix, into output: Matrix, pass: ForwardPass)
}

/// One batch of one layer's FFN, as the observer sees it. Rows 0..<tokenCount are valid.
struct FeedForwardObservation {
    let layer: Int
    let tokenCount: Int
    /// The residual stream entering the FFN, before its norm (what predictors read).
    let input: Matrix
    /// act(gate) per neuron (ungated FFNs: act(up)).
    let activated: Matrix
    /// The up projection of gated FFNs.
    let up: Matrix?
}
