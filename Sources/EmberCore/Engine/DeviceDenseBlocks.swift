import Foundation

/// The dense blocks placed on an OpenCL device (DESIGN.md section 6: the device holds dense
/// blocks first): the attention blocks of some layers, run for each decoded token, and maybe
/// the output head, run for every single row of logits. The device keeps its own KV
/// cache for those layers; the CPU's stays complete (the device's keys and values are read
/// back each token) and rows the CPU writes for prompt batches are copied over before the
/// device next attends. One token's block is enqueued without a host round trip; the host
/// reads back the new residual, key and value once.
///
/// Llama-family blocks without biases (Llama 2/3, Mistral, SmolLM2, the synthetic models);
/// `unsupportedReason` says why others are not offloaded.
public final class DeviceDenseBlocks: DenseOffload, @unchecked Sendable {
    public let device: OpenCLDevice
    /// The layers whose attention runs on the device.
    public var layers: [Int] { state.indices.filter { state[$0] != nil } }
    /// Why the device stopped (the CPU then runs every layer), if it did.
    public private(set) var failure: String?
    /// Attention blocks and logit rows the device has computed so far.
    public private(set) var attentionRuns = 0
    public private(set) var outputHeadRuns = 0

    private struct Layer {
        let norm: OpenCLBuffer
        let query, key, value, output: OpenCLWeightMatrix
        let keys, values: OpenCLBuffer
        /// Rows 0..<synced of the device cache equal the CPU's.
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
    private let x, normed, q, k, v, attended, projected, cosines, sines, scores: OpenCLBuffer
    private var scratch: [TensorType: OpenCLBuffer] = [:]
    private let head: (norm: OpenCLBuffer, output: OpenCLWeightMatrix, logits: OpenCLBuffer)?

    /// Why `model`'s attention cannot run on the device, or nil when it can.
    public static func unsupportedReason(_ model: LanguageModel) -> String? {
        let config = model.config
        guard config.family == .llama else { return "\(config.architecture) blocks are not offloaded yet" }
        if model.weights.layers.contains(where: { $0.queryBias != nil || $0.keyBias != nil || $0.valueBias != nil }) {
            return "attention biases are not offloaded yet"
        }
        return nil
    }

    /// Device bytes a layer's attention takes: its weights and a KV cache of `capacity` positions.
    public static func byteCount(_ w: LayerWeights, config: ModelConfig, capacity: Int) -> Int {
        w.query.byteCount + w.key.byteCount + w.value.byteCount + w.output.byteCount + w.attentionNorm.count * 4
            + capacity * (config.kvLength + config.valueLength) * 4
    }

    /// Device bytes of the per-token buffers beside the layers' (an upper bound).
    public static func workingBytes(_ config: ModelConfig, capacity: Int) -> Int {
        let c = config, widest = max(c.embeddingLength, c.headCount * c.valueDimension)
        let vectors = 3 * c.embeddingLength + c.queryLength + c.kvLength + c.valueLength + c.headCount * c.valueDimension
            + c.headDimension + c.headCount * capacity
        // Up to five activation formats (q, k, v, output, head), each at most a float per
        // element; the logits.
        return 4 * (vectors + 5 * widest + c.vocabularySize)
    }

    /// Device bytes of the output head: the matrix and the final norm.
    public static func outputHeadByteCount(_ weights: ModelWeights) -> Int {
        weights.output.byteCount + weights.outputNorm.count * 4
    }

    /// Uploads the attention weights of `layers`, makes their caches of `capacity` positions,
    /// and uploads the output head when `outputHead`.
    public init(device: OpenCLDevice, model: LanguageModel, layers: [Int], outputHead: Bool = false, capacity: Int) throws {
        if let reason = Self.unsupportedReason(model) { throw OpenCLError.invalidArgument(reason) }
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
        x = try buffer(d, "attention residual")
        normed = try buffer(d, "attention normed input")
        q = try buffer(c.queryLength, "query")
        k = try buffer(c.kvLength, "key")
        v = try buffer(c.valueLength, "value")
        attended = try buffer(c.headCount * c.valueDimension, "attention output")
        projected = try buffer(d, "attention projection")
        cosines = try buffer(c.headDimension / 2, "rope cosines")
        sines = try buffer(c.headDimension / 2, "rope sines")
        scores = try buffer(c.headCount * capacity, "attention scores")
        let widest = max(d, c.headCount * c.valueDimension)
        var state = [Layer?](repeating: nil, count: c.layerCount)
        for l in layers {
            let w = model.weights.layers[l]
            state[l] = Layer(
                norm: try device.makeBuffer(copying: UnsafeRawBufferPointer(start: w.attentionNorm.pointer, count: d * 4),
                                            label: "blk.\(l).attn_norm"),
                query: try matrices.upload(w.query), key: try matrices.upload(w.key),
                value: try matrices.upload(w.value), output: try matrices.upload(w.output),
                keys: try buffer(capacity * c.kvLength, "blk.\(l) key cache"),
                values: try buffer(capacity * c.valueLength, "blk.\(l) value cache"))
            let placed = state[l]!
            for matrix in [placed.query, placed.key, placed.value, placed.output] where matrix.activationType != .f32 && scratch[matrix.activationType] == nil {
                // One buffer per format serves every input of that format: sized for the widest.
                scratch[matrix.activationType] = try matrices.makeActivations(matrix.activationType, length: widest)
            }
        }
        self.state = state
        if outputHead {
            let w = model.weights
            let output = try matrices.upload(w.output)
            head = (norm: try device.makeBuffer(copying: UnsafeRawBufferPointer(start: w.outputNorm.pointer, count: d * 4),
                                                label: "output_norm"),
                    output: output, logits: try buffer(output.rows, "logits"))
            if output.activationType != .f32, scratch[output.activationType] == nil {
                scratch[output.activationType] = try matrices.makeActivations(output.activationType, length: widest)
            }
        } else {
            head = nil
        }
    }

    public func outputHead(_ residual: UnsafePointer<Float>, into logits: UnsafeMutablePointer<Float>) -> Bool {
        guard failure == nil, let head else { return false }
        let d = config.embeddingLength
        do {
            try device.write(UnsafeRawBufferPointer(start: residual, count: d * 4), to: x)
            try vectors.rmsNorm(x, weight: head.norm, epsilon: config.rmsEpsilon, length: d, into: normed)
            let input = try matrices.activations(for: head.output, from: normed, length: d, scratch: scratch[head.output.activationType])
            try matrices.multiply(head.output, activations: input, into: head.logits)
            try device.read(head.logits, into: UnsafeMutableRawBufferPointer(start: logits, count: head.output.rows * 4))
            outputHeadRuns += 1
            return true
        } catch {
            failure = "\(error)"
            return false
        }
    }

    public func cacheWritten(layer: Int, positions: Range<Int>) {
        if state[layer] != nil { state[layer]!.synced = min(state[layer]!.synced, positions.lowerBound) }
    }

    public func attention(_ w: LayerWeights, layer: Int, pass: ForwardPass, cache: KVCache) -> Bool {
        guard failure == nil, var s = state[layer] else { return false }
        let position = pass.positions[0]
        guard position < capacity else { return false }
        do {
            try run(&s, layer: layer, position: position, pass: pass, cache: cache)
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

    private func run(_ s: inout Layer, layer: Int, position: Int, pass: ForwardPass, cache: KVCache) throws {
        let c = config, d = c.embeddingLength
        // Rows the CPU wrote since the device last matched it.
        if s.synced < position {
            let rows = position - s.synced
            try device.write(UnsafeRawBufferPointer(start: cache.key(layer: layer, position: s.synced), count: rows * c.kvLength * 4),
                             to: s.keys, offset: s.synced * c.kvLength * 4)
            try device.write(UnsafeRawBufferPointer(start: cache.value(layer: layer, position: s.synced), count: rows * c.valueLength * 4),
                             to: s.values, offset: s.synced * c.valueLength * 4)
            s.synced = position
        }
        try device.write(UnsafeRawBufferPointer(start: pass.x.row(0), count: d * 4), to: x)
        let half = c.headDimension / 2
        try device.write(UnsafeRawBufferPointer(start: pass.ropeCos.row(0), count: half * 4), to: cosines)
        try device.write(UnsafeRawBufferPointer(start: pass.ropeSin.row(0), count: half * 4), to: sines)

        try vectors.rmsNorm(x, weight: s.norm, epsilon: c.rmsEpsilon, length: d, into: normed)
        for (matrix, out) in [(s.query, q), (s.key, k), (s.value, v)] {
            // Same-format inputs are converted again: a few µs, against sharing state by type.
            let input = try matrices.activations(for: matrix, from: normed, length: d, scratch: scratch[matrix.activationType])
            try matrices.multiply(matrix, activations: input, into: out)
        }
        try vectors.rope(q, heads: c.headCount, headDimension: c.headDimension, rope: c.rope, cosines: cosines, sines: sines)
        try vectors.rope(k, heads: c.kvHeadCount, headDimension: c.headDimension, rope: c.rope, cosines: cosines, sines: sines)
        try copy(k, into: s.keys, at: position * c.kvLength, count: c.kvLength)
        try copy(v, into: s.values, at: position * c.valueLength, count: c.valueLength)
        try vectors.attention(query: q, cache: .init(keys: s.keys, keyStride: c.kvLength, values: s.values, valueStride: c.valueLength),
                              count: position + 1, heads: c.headCount, kvHeads: c.kvHeadCount, headDimension: c.headDimension,
                              valueDimension: c.valueDimension, scale: c.attentionScale, scores: scores, into: attended)
        let outputInput = try matrices.activations(for: s.output, from: attended, length: s.output.columns,
                                                   scratch: scratch[s.output.activationType])
        try matrices.multiply(s.output, activations: outputInput, into: projected)
        try addKernel.setArguments([.buffer(projected), .buffer(x), .int32(Int32(d))])
        try device.enqueue(addKernel, globalSize: d, localSize: Self.localSize)

        // Read back what the CPU needs: the key and value first, the residual last (so a
        // failure before it leaves the host as it was).
        try device.read(k, into: UnsafeMutableRawBufferPointer(start: cache.key(layer: layer, position: position), count: c.kvLength * 4))
        try device.read(v, into: UnsafeMutableRawBufferPointer(start: cache.value(layer: layer, position: position), count: c.valueLength * 4))
        try device.read(x, into: UnsafeMutableRawBufferPointer(start: pass.x.row(0), count: d * 4))
    }

    private func copy(_ source: OpenCLBuffer, into destination: OpenCLBuffer, at offset: Int, count: Int) throws {
        try copyKernel.setArguments([.buffer(source), .buffer(destination), .int32(Int32(offset)), .int32(Int32(count))])
        try device.enqueue(copyKernel, globalSize: count, localSize: Self.localSize)
    }

    static let localSize = 64

    /// Moving a key or value into its cache row, and adding the output into the residual.
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
