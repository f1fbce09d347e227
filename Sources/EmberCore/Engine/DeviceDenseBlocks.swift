import Foundation

/// The device executor of the dense operations placed on an OpenCL device (DESIGN.md section 6):
/// the `attention` operation of some layers, run for each decoded token, and maybe the output
/// head, run for every single row of logits. It computes the same operation the CPU does in
/// ForwardPass, from the same weights (Layers.swift): projections with their biases, per-head
/// q/k norms, rotary positions, the cache, windowed grouped attention and the output
/// projection. The host keeps the norms and residual adds, which cost it nothing.
///
/// The device keeps its own KV cache for its layers; the CPU's stays complete (the device's
/// keys and values are read back each token) and rows the CPU writes for prompt batches are
/// copied over before the device next attends. One token's attention is enqueued without a
/// host round trip; the host reads back the output, key and value once.
final class DeviceDenseBlocks: DenseOffload {
    let device: OpenCLDevice
    /// The layers whose attention runs on the device.
    var layers: [Int] { state.indices.filter { state[$0] != nil } }
    /// Why the device stopped (the CPU then runs every layer), if it did.
    private(set) var failure: String?
    /// Attention operations and logit rows the device has computed so far.
    private(set) var attentionRuns = 0
    private(set) var outputHeadRuns = 0

    private struct Layer {
        let query, key, value, output: OpenCLWeightMatrix
        let queryBias, keyBias, valueBias, outputBias: OpenCLBuffer?
        let queryNorm, keyNorm: (weight: OpenCLBuffer, epsilon: Float)?
        let keys, values: OpenCLBuffer
        /// Rows 0..<synced of the device cache hold the CPU's (as floats; the CPU may keep them rounded).
        var synced = 0
    }
    private var state: [Layer?]
    private let config: ModelConfig
    private let capacity: Int
    private let matrices: OpenCLMatrixKernels
    private let vectors: OpenCLVectorKernels
    private let copyKernel: OpenCLKernel
    private let addKernel: OpenCLKernel
    // One token's vectors.
    private let normed, q, k, v, attended, projected, cosines, sines, scores: OpenCLBuffer
    private var scratch: [TensorType: OpenCLBuffer] = [:]
    private let head: (output: OpenCLWeightMatrix, logits: OpenCLBuffer)?

    /// Device bytes a layer's attention takes: its weights, biases and head norms, and a KV cache
    /// of `capacity` positions.
    static func byteCount(_ a: Attention, config: ModelConfig, capacity: Int) -> Int {
        let vectors = [a.query.bias, a.key.bias, a.value.bias, a.output.bias, a.queryNorm?.weight, a.keyNorm?.weight]
        return a.byteCount + vectors.reduce(0) { $0 + ($1?.count ?? 0) } * 4 + capacity * (config.kvLength + config.valueLength) * 4
    }

    /// Device bytes of the per-token buffers beside the layers' (an upper bound).
    static func workingBytes(_ config: ModelConfig, capacity: Int) -> Int {
        let c = config, widest = max(c.embeddingLength, c.attentionOutputLength)
        let vectors = 2 * c.embeddingLength + c.queryLength + c.kvLength + c.valueLength + c.attentionOutputLength
            + c.headDimension + c.headCount * capacity
        // Up to five activation formats (q, k, v, output, head), each at most a float per
        // element; the logits.
        return 4 * (vectors + 5 * widest + c.vocabularySize)
    }

    /// Uploads the attention of `layers`, makes their caches of `capacity` positions, and
    /// uploads the output head when `outputHead`.
    init(device: OpenCLDevice, model: LanguageModel, layers: [Int], outputHead: Bool = false, capacity: Int) throws {
        self.device = device
        config = model.config
        self.capacity = capacity
        matrices = try OpenCLMatrixKernels(device: device)
        vectors = try OpenCLVectorKernels(device: device)
        let program = try OpenCLProgram(source: Self.source, name: "attention glue", device: device)
        copyKernel = try program.kernel("copy_into")
        addKernel = try program.kernel("add_into")
        let c = config, d = c.embeddingLength
        func buffer(_ floats: Int, _ label: String) throws -> OpenCLBuffer {
            try device.makeBuffer(byteCount: max(1, floats) * 4, label: label)
        }
        func upload(_ vector: FloatVector?, _ label: String) throws -> OpenCLBuffer? {
            try vector.map { try device.makeBuffer(copying: UnsafeRawBufferPointer(start: $0.pointer, count: $0.count * 4), label: label) }
        }
        normed = try buffer(d, "attention input")
        q = try buffer(c.queryLength, "query")
        k = try buffer(c.kvLength, "key")
        v = try buffer(c.valueLength, "value")
        attended = try buffer(c.attentionOutputLength, "attention output")
        projected = try buffer(d, "attention projection")
        cosines = try buffer(c.headDimension / 2, "rope cosines")
        sines = try buffer(c.headDimension / 2, "rope sines")
        scores = try buffer(c.headCount * capacity, "attention scores")
        let widest = max(d, c.attentionOutputLength)
        var state = [Layer?](repeating: nil, count: c.layerCount)
        for l in layers {
            let a = model.architecture.attention(l), p = "blk.\(l)."
            state[l] = Layer(
                query: try matrices.upload(a.query.weight), key: try matrices.upload(a.key.weight),
                value: try matrices.upload(a.value.weight), output: try matrices.upload(a.output.weight),
                queryBias: try upload(a.query.bias, p + "attn_q.bias"), keyBias: try upload(a.key.bias, p + "attn_k.bias"),
                valueBias: try upload(a.value.bias, p + "attn_v.bias"), outputBias: try upload(a.output.bias, p + "attn_output.bias"),
                queryNorm: try a.queryNorm.map { (try upload($0.weight, p + "attn_q_norm")!, $0.epsilon) },
                keyNorm: try a.keyNorm.map { (try upload($0.weight, p + "attn_k_norm")!, $0.epsilon) },
                keys: try buffer(capacity * c.kvLength, p + "key cache"),
                values: try buffer(capacity * c.valueLength, p + "value cache"))
            let placed = state[l]!
            for matrix in [placed.query, placed.key, placed.value, placed.output] where matrix.activationType != .f32 && scratch[matrix.activationType] == nil {
                // One buffer per format serves every input of that format: sized for the widest.
                scratch[matrix.activationType] = try matrices.makeActivations(matrix.activationType, length: widest)
            }
        }
        self.state = state
        if outputHead {
            let output = try matrices.upload(model.architecture.head.output.weight)
            head = (output: output, logits: try buffer(output.rows, "logits"))
            if output.activationType != .f32, scratch[output.activationType] == nil {
                scratch[output.activationType] = try matrices.makeActivations(output.activationType, length: widest)
            }
        } else {
            head = nil
        }
    }

    func outputHead(_ h: OutputHead, normed input: UnsafePointer<Float>, into logits: UnsafeMutablePointer<Float>) -> Bool {
        guard failure == nil, let head, h.output.bias == nil else { return false }
        let d = config.embeddingLength
        do {
            try device.write(UnsafeRawBufferPointer(start: input, count: d * 4), to: normed)
            let activations = try matrices.activations(for: head.output, from: normed, length: d,
                                                       scratch: scratch[head.output.activationType])
            try matrices.multiply(head.output, activations: activations, into: head.logits)
            try device.read(head.logits, into: UnsafeMutableRawBufferPointer(start: logits, count: head.output.rows * 4))
            outputHeadRuns += 1
            return true
        } catch {
            failure = "\(error)"
            return false
        }
    }

    func cacheWritten(layer: Int, positions: Range<Int>) {
        if state[layer] != nil { state[layer]!.synced = min(state[layer]!.synced, positions.lowerBound) }
    }

    func attention(_ a: Attention, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                   pass: ForwardPass) -> Bool {
        guard failure == nil, var s = state[layer] else { return false }
        let position = pass.positions[0]
        guard position < capacity else { return false }
        do {
            try run(a, &s, layer: layer, position: position, input: input, output: output, pass: pass)
            s.synced = position + 1
            state[layer] = s
            attentionRuns += 1
            return true
        } catch {
            // Nothing on the host changed before the last read; the CPU takes over for good.
            failure = "\(error)"
            return false
        }
    }

    private func run(_ a: Attention, _ s: inout Layer, layer: Int, position: Int, input: UnsafePointer<Float>,
                     output: UnsafeMutablePointer<Float>, pass: ForwardPass) throws {
        let c = config, d = c.embeddingLength, cache = pass.cache
        // Rows the CPU wrote since the device last matched it, as floats (the CPU's cache may
        // hold them rounded to F16 or Q8_0; the device's holds floats).
        if s.synced < position {
            let rows = s.synced..<position
            var keys = [Float](repeating: 0, count: rows.count * c.kvLength)
            var values = [Float](repeating: 0, count: rows.count * c.valueLength)
            keys.withUnsafeMutableBufferPointer { cache.loadKeys(layer: layer, positions: rows, into: $0.baseAddress!) }
            values.withUnsafeMutableBufferPointer { cache.loadValues(layer: layer, positions: rows, into: $0.baseAddress!) }
            try keys.withUnsafeBytes { try device.write($0, to: s.keys, offset: s.synced * c.kvLength * 4) }
            try values.withUnsafeBytes { try device.write($0, to: s.values, offset: s.synced * c.valueLength * 4) }
            s.synced = position
        }
        try device.write(UnsafeRawBufferPointer(start: input, count: d * 4), to: normed)

        for (matrix, bias, out) in [(s.query, s.queryBias, q), (s.key, s.keyBias, k), (s.value, s.valueBias, v)] {
            // Same-format inputs are converted again: a few µs, against sharing state by type.
            let activations = try matrices.activations(for: matrix, from: normed, length: d, scratch: scratch[matrix.activationType])
            try matrices.multiply(matrix, activations: activations, into: out)
            if let bias { try add(bias, into: out, count: matrix.rows) }
        }
        if let norm = s.queryNorm {
            try vectors.rmsNorm(q, weight: norm.weight, epsilon: norm.epsilon, rows: c.headCount, length: c.headDimension, into: q)
        }
        if let norm = s.keyNorm {
            try vectors.rmsNorm(k, weight: norm.weight, epsilon: norm.epsilon, rows: c.kvHeadCount, length: c.headDimension, into: k)
        }
        if let rope = a.rope {
            let angles = pass.ropeAngles(rope), half = rope.dimensions / 2
            try device.write(UnsafeRawBufferPointer(start: angles.cos.row(0), count: half * 4), to: cosines)
            try device.write(UnsafeRawBufferPointer(start: angles.sin.row(0), count: half * 4), to: sines)
            try vectors.rope(q, heads: c.headCount, headDimension: c.headDimension, rope: rope, cosines: cosines, sines: sines)
            try vectors.rope(k, heads: c.kvHeadCount, headDimension: c.headDimension, rope: rope, cosines: cosines, sines: sines)
        }
        try copy(k, into: s.keys, at: position * c.kvLength, count: c.kvLength)
        try copy(v, into: s.values, at: position * c.valueLength, count: c.valueLength)
        let first = a.window.map { max(0, position - $0 + 1) } ?? 0
        try vectors.attention(query: q, cache: .init(keys: s.keys, keyStride: c.kvLength, values: s.values, valueStride: c.valueLength),
                              firstPosition: first, count: position + 1 - first, heads: c.headCount, kvHeads: c.kvHeadCount,
                              headDimension: c.headDimension, valueDimension: c.valueDimension, scale: a.scale,
                              scores: scores, into: attended)
        let outputInput = try matrices.activations(for: s.output, from: attended, length: s.output.columns,
                                                   scratch: scratch[s.output.activationType])
        try matrices.multiply(s.output, activations: outputInput, into: projected)
        if let bias = s.outputBias { try add(bias, into: projected, count: d) }

        // Read back what the host needs: the key and value, then the output; the host's cache
        // takes them only once every read succeeded (a failure leaves the host as it was).
        var key = [Float](repeating: 0, count: c.kvLength), value = [Float](repeating: 0, count: c.valueLength)
        try key.withUnsafeMutableBytes { try device.read(k, into: $0) }
        try value.withUnsafeMutableBytes { try device.read(v, into: $0) }
        try device.read(projected, into: UnsafeMutableRawBufferPointer(start: output, count: d * 4))
        cache.storeKey(key, layer: layer, position: position)
        cache.storeValue(value, layer: layer, position: position)
    }

    private func copy(_ source: OpenCLBuffer, into destination: OpenCLBuffer, at offset: Int, count: Int) throws {
        try copyKernel.setArguments([.buffer(source), .buffer(destination), .int32(Int32(offset)), .int32(Int32(count))])
        try device.enqueue(copyKernel, globalSize: count, localSize: Self.localSize)
    }

    private func add(_ y: OpenCLBuffer, into x: OpenCLBuffer, count: Int) throws {
        try addKernel.setArguments([.buffer(y), .buffer(x), .int32(Int32(count))])
        try device.enqueue(addKernel, globalSize: count, localSize: Self.localSize)
    }

    static let localSize = 64

    /// Moving a key or value into its cache row, and adding a bias.
    static let source = """
    __kernel void copy_into(__global const float *source, __global float *destination, int offset, int count) {
        int i = get_global_id(0);
        if (i < count) destination[offset + i] = source[i];
    }

    __kernel void add_into(__global const float *y, __global float *x, int count) {
        int i = get_global_id(0);
        if (i < count) x[i] += y[i];
    }
    """
}
