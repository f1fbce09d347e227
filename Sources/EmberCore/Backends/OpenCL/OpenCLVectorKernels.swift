/// The float steps of a layer on one device (RMS norm, gated activation, RoPE, attention),
/// mirroring VectorKernels, Rope and the CPU attention. Like OpenCLMatrixKernels, calls only
/// enqueue work, and sizes are checked before anything is enqueued.
final class OpenCLVectorKernels: @unchecked Sendable {
    let device: OpenCLDevice
    private let kernels: OpenCLKernelSet

    init(device: OpenCLDevice) throws {
        self.device = device
        kernels = try OpenCLKernelSet(source: OpenCLVectorKernelSource.source, name: "vector kernels",
                                      groupSize: OpenCLVectorKernelSource.groupSize, device: device)
    }

    private func kernel(_ name: String) throws -> OpenCLKernel { try kernels.kernel(name) }

    private static func positive(_ values: [(String, Int)]) throws {
        for (name, value) in values where value <= 0 {
            throw OpenCLError.invalidArgument("OpenCL kernel argument \(name) must be positive, not \(value)")
        }
    }

    /// out = x / rms(x) · weight for each of `rows` vectors of `length` floats (weight nil: no
    /// scaling). `out` may be `x`.
    func rmsNorm(_ x: OpenCLBuffer, weight: OpenCLBuffer?, epsilon: Float, rows: Int = 1, length: Int,
                        into out: OpenCLBuffer) throws {
        try Self.positive([("rows", rows), ("length", length)])
        try x.require(rows * length * 4)
        try out.require(rows * length * 4)
        try weight?.require(length * 4)
        let k = try kernel("rms_norm")
        try k.setArguments([.buffer(x), .buffer(weight ?? x), .int32(weight == nil ? 0 : 1), .float(epsilon),
                            .buffer(out), .int32(Int32(length))])
        try device.enqueue(k, globalSize: rows * OpenCLVectorKernelSource.groupSize, localSize: OpenCLVectorKernelSource.groupSize)
    }

    /// out[i] = act(gate[i]) · up[i] for i < count (up nil: act(gate[i]); dReLU: relu(gate[i]) ·
    /// relu(up[i])). `out` may be `gate`.
    func gatedActivation(_ activation: VectorKernels.Activation, gate: OpenCLBuffer, up: OpenCLBuffer?,
                                count: Int, into out: OpenCLBuffer) throws {
        try Self.positive([("count", count)])
        try gate.require(count * 4)
        try up?.require(count * 4)
        try out.require(count * 4)
        let code: Int32
        switch activation {
        case .silu: code = 0
        case .gelu: code = 1
        case .relu: code = 2
        case .drelu: code = 3
        }
        let k = try kernel("gated_activation")
        try k.setArguments([.int32(code), .buffer(gate), .buffer(up ?? gate), .int32(up == nil ? 0 : 1),
                            .buffer(out), .int32(Int32(count))])
        try device.enqueue(k, globalSize: count, localSize: OpenCLVectorKernelSource.groupSize)
    }

    /// values[k] += bias[rows[k]] for k < count: gathered rows' biases (`bias` holds `biasCount`
    /// floats; a row id outside it makes the value NaN rather than reading past the buffer).
    func addGathered(bias: OpenCLBuffer, biasCount: Int, rows: OpenCLBuffer, count: Int, into values: OpenCLBuffer) throws {
        try Self.positive([("count", count), ("biasCount", biasCount)])
        try bias.require(biasCount * 4)
        try rows.require(count * 4)
        try values.require(count * 4)
        let k = try kernel("add_gathered")
        try k.setArguments([.buffer(values), .buffer(bias), .int32(Int32(biasCount)), .buffer(rows), .int32(Int32(count))])
        try device.enqueue(k, globalSize: count, localSize: OpenCLVectorKernelSource.groupSize)
    }

    /// Rotates `heads` head vectors (`headDimension` floats apart) in place as `rope.rotate`
    /// does, with the cos/sin of `rope.angles(at:)` uploaded in `cosines` and `sines`.
    func rope(_ x: OpenCLBuffer, heads: Int, headDimension: Int, rope: Rope,
                     cosines: OpenCLBuffer, sines: OpenCLBuffer) throws {
        try Self.positive([("heads", heads), ("headDimension", headDimension), ("rope dimensions", rope.dimensions)])
        guard rope.dimensions <= headDimension, rope.dimensions % 2 == 0 else {
            throw OpenCLError.invalidArgument("RoPE over \(rope.dimensions) dimensions does not fit heads of \(headDimension)")
        }
        try x.require(heads * headDimension * 4)
        try cosines.require(rope.dimensions / 2 * 4)
        try sines.require(rope.dimensions / 2 * 4)
        let k = try kernel("rope")
        try k.setArguments([.buffer(x), .buffer(cosines), .buffer(sines), .int32(Int32(heads)), .int32(Int32(headDimension)),
                            .int32(Int32(rope.dimensions)), .int32(rope.layout == .halves ? 1 : 0)])
        try device.enqueue(k, globalSize: heads * rope.dimensions / 2, localSize: OpenCLVectorKernelSource.groupSize)
    }

    /// Where a KV cache lives on the device: position p's keys start `keyStride` floats after
    /// position p − 1's (kv heads of `headDimension` floats side by side), values alike.
    struct CacheLayout {
        var keys: OpenCLBuffer
        var keyStride: Int
        var values: OpenCLBuffer
        var valueStride: Int
        init(keys: OpenCLBuffer, keyStride: Int, values: OpenCLBuffer, valueStride: Int) {
            self.keys = keys
            self.keyStride = keyStride
            self.values = values
            self.valueStride = valueStride
        }
    }

    /// Single-query attention of `heads` query heads over `count` cached positions from
    /// `firstPosition` on (past 0 for a sliding window),
    /// as the CPU's ember_attention_head per head: query head h uses kv head h / (heads /
    /// kvHeads). `scores` is scratch for heads × count floats; out gets heads × valueDimension.
    func attention(query: OpenCLBuffer, cache: CacheLayout, firstPosition: Int = 0, count: Int, heads: Int, kvHeads: Int,
                          headDimension: Int, valueDimension: Int, scale: Float,
                          scores: OpenCLBuffer, into out: OpenCLBuffer) throws {
        try Self.positive([("count", count), ("heads", heads), ("kvHeads", kvHeads), ("headDimension", headDimension),
                           ("valueDimension", valueDimension)])
        guard firstPosition >= 0 else { throw OpenCLError.invalidArgument("attention: first position \(firstPosition)") }
        guard heads % kvHeads == 0, cache.keyStride >= kvHeads * headDimension,
              cache.valueStride >= kvHeads * valueDimension else {
            throw OpenCLError.invalidArgument("attention: \(heads) heads over \(kvHeads) kv heads with key stride "
                                              + "\(cache.keyStride) and value stride \(cache.valueStride) do not fit")
        }
        try query.require(heads * headDimension * 4)
        let last = firstPosition + count - 1
        try cache.keys.require((last * cache.keyStride + kvHeads * headDimension) * 4)
        try cache.values.require((last * cache.valueStride + kvHeads * valueDimension) * 4)
        try scores.require(heads * count * 4)
        try out.require(heads * valueDimension * 4)
        let k = try kernel("attention")
        try k.setArguments([.buffer(query), .buffer(cache.keys), .int32(Int32(cache.keyStride)), .buffer(cache.values),
                            .int32(Int32(cache.valueStride)), .int32(Int32(firstPosition)), .int32(Int32(count)), .int32(Int32(headDimension)),
                            .int32(Int32(valueDimension)), .int32(Int32(heads / kvHeads)), .float(scale),
                            .buffer(scores), .buffer(out)])
        try device.enqueue(k, globalSize: heads * OpenCLVectorKernelSource.groupSize, localSize: OpenCLVectorKernelSource.groupSize)
    }
}
