import CEmberKernels

/// A weight matrix on an OpenCL device: its GGUF blocks uploaded as they are in the file.
final class OpenCLWeightMatrix: @unchecked Sendable {
    let name: String
    let type: TensorType
    let rows: Int
    let columns: Int
    let rowBytes: Int
    let buffer: OpenCLBuffer

    init(name: String, type: TensorType, rows: Int, columns: Int, rowBytes: Int, buffer: OpenCLBuffer) {
        self.name = name
        self.type = type
        self.rows = rows
        self.columns = columns
        self.rowBytes = rowBytes
        self.buffer = buffer
    }

    /// The format activations must be in before they meet this matrix (as on the CPU).
    var activationType: TensorType { OpenCLMatrixKernels.activationType(for: type) }
}

/// The matrix-vector kernels on one device, mirroring the CPU's (WeightMatrix.multiply,
/// multiply(gathering:), NeuronMajorMatrix.accumulate): activations are quantized on the device
/// to the weight type's activation format, then dotted in integers with the raw blocks.
///
/// Every call only enqueues work: a sequence of calls runs on the device without a host round
/// trip, and `device.read` (or `finish`) waits for it. One thread at a time uses an instance
/// (kernel arguments belong to the kernel objects). Buffer sizes and shapes are checked
/// before anything is enqueued, so bad input is a thrown error, never a read outside a buffer.
final class OpenCLMatrixKernels: @unchecked Sendable {
    let device: OpenCLDevice
    private let kernels: OpenCLKernelSet

    /// Weight types with dense and row-gather kernels.
    static let supportedTypes: Set<TensorType> = [.f32, .f16, .q4_0, .q4_1, .q5_0, .q8_0, .q4_K, .q6_K]
    /// Neuron-major row types with column-gather kernels (what NeuronMajorMatrix stores).
    static let accumulateTypes: Set<TensorType> = [.q8_0, .q4_0, .f16]

    /// The largest work-group these kernels launch: a device must allow at least that many.
    static let largestLocalSize = max(OpenCLMatrixKernelSource.rowGroupSize, OpenCLMatrixKernelSource.elementGroupSize)

    /// Builds the kernels for `device`.
    init(device: OpenCLDevice) throws {
        self.device = device
        kernels = try OpenCLKernelSet(source: OpenCLMatrixKernelSource.source, name: "matrix kernels",
                                      groupSize: Self.largestLocalSize, device: device)
    }

    private func kernel(_ name: String) throws -> OpenCLKernel { try kernels.kernel(name) }

    /// The activation format of a weight type, as the CPU's ember_activation_type says.
    static func activationType(for type: TensorType) -> TensorType {
        TensorType(rawValue: UInt32(ember_activation_type(Int32(type.rawValue)))) ?? .f32
    }

    /// Bytes of `length` floats in activation format `type`.
    static func activationBytes(_ type: TensorType, length: Int) -> Int {
        ember_activation_bytes(Int32(type.rawValue), Int64(length))
    }

    private static func kernelSuffix(_ type: TensorType) -> String? {
        switch type {
        case .f32: return "f32"
        case .f16: return "f16"
        case .q4_0: return "q4_0"
        case .q4_1: return "q4_1"
        case .q5_0: return "q5_0"
        case .q8_0: return "q8_0"
        case .q4_K: return "q4_k"
        case .q6_K: return "q6_k"
        default: return nil
        }
    }

    // MARK: Upload

    /// Copies `matrix`'s blocks to the device, counted against its budget.
    func upload(_ matrix: WeightMatrix) throws -> OpenCLWeightMatrix {
        guard Self.supportedTypes.contains(matrix.type) || Self.accumulateTypes.contains(matrix.type) else {
            throw OpenCLError.unsupportedType(matrix: matrix.name, type: matrix.type, operation: "matrix")
        }
        guard matrix.rows > 0, matrix.columns > 0 else {
            throw OpenCLError.invalidArgument("\(matrix.name): an empty matrix (\(matrix.rows) x \(matrix.columns)) cannot be uploaded")
        }
        let buffer = try device.makeBuffer(copying: UnsafeRawBufferPointer(start: matrix.data, count: matrix.byteCount),
                                           label: matrix.name)
        return OpenCLWeightMatrix(name: matrix.name, type: matrix.type, rows: matrix.rows, columns: matrix.columns,
                                  rowBytes: matrix.rowBytes, buffer: buffer)
    }

    /// Copies a neuron-major down matrix to the device, for `accumulate`.
    func upload(_ matrix: NeuronMajorMatrix) throws -> OpenCLWeightMatrix {
        try upload(matrix.weights)
    }

    /// A device buffer for one vector of `length` floats in activation format `type`.
    func makeActivations(_ type: TensorType, length: Int, label: String = "activations") throws -> OpenCLBuffer {
        try device.makeBuffer(byteCount: Self.activationBytes(type, length: length), label: label)
    }

    // MARK: Kernels

    /// Converts `length` floats of `input` to activation format `type` in `output`, as the CPU's
    /// ember_quantize_activations does (an F32 format needs no conversion: pass the floats on).
    func quantize(_ input: OpenCLBuffer, length: Int, to type: TensorType, into output: OpenCLBuffer) throws {
        let name: String, block: Int
        switch type {
        case .q8_0: (name, block) = ("quantize_q8_0", 32)
        case .q8_1: (name, block) = ("quantize_q8_1", 32)
        case .q8_K: (name, block) = ("quantize_q8_k", 256)
        default: throw OpenCLError.invalidArgument("no OpenCL activation quantizer for \(type)")
        }
        guard length > 0, length % block == 0 else {
            throw OpenCLError.invalidArgument("\(type) activations need a length that is a multiple of \(block), not \(length)")
        }
        try input.require(length * 4)
        try output.require(Self.activationBytes(type, length: length))
        let k = try kernel(name)
        try k.setArguments([.buffer(input), .buffer(output), .int32(Int32(length / block))])
        try device.enqueue(k, globalSize: length / block, localSize: OpenCLMatrixKernelSource.elementGroupSize)
    }

    /// `count` vectors of `length` floats (back to back in `floats`) ready for `matrix`: the
    /// floats themselves when it takes F32 activations, else converted into `scratch` (made
    /// when nil or too small). Pass the result to `multiply`.
    func activations(for matrix: OpenCLWeightMatrix, from floats: OpenCLBuffer, length: Int, count: Int = 1,
                            scratch: OpenCLBuffer? = nil) throws -> OpenCLBuffer {
        let type = matrix.activationType
        guard type != .f32 else {
            try floats.require(length * count * 4)
            return floats
        }
        let bytes = Self.activationBytes(type, length: length) * count
        let output = try scratch.flatMap { $0.byteCount >= bytes ? $0 : nil }
            ?? device.makeBuffer(byteCount: bytes, label: "\(type) activations")
        try quantize(floats, length: length * count, to: type, into: output)
        return output
    }

    /// y[r] = row r · activations for every row (activations in `matrix.activationType`).
    func multiply(_ matrix: OpenCLWeightMatrix, activations: OpenCLBuffer, into y: OpenCLBuffer) throws {
        let suffix = try rowKernelSuffix(matrix)
        try activations.require(Self.activationBytes(matrix.activationType, length: matrix.columns))
        try y.require(matrix.rows * 4)
        let k = try kernel("matvec_" + suffix)
        try k.setArguments([.buffer(matrix.buffer), .uint64(UInt64(matrix.rowBytes)), .int32(blocks(matrix)),
                            .buffer(activations), .buffer(y)])
        let group = OpenCLMatrixKernelSource.rowGroupSize
        try device.enqueue(k, globalSize: matrix.rows * group, localSize: group)
    }

    /// Prefill: y[c * rows + r] = row r · activation vector c, for `count` vectors stored back
    /// to back in `matrix.activationType` (as `quantize` leaves `count` × columns floats: each
    /// vector is a whole number of blocks). Mirrors WeightMatrix.multiply(_:stride:count:...).
    func multiply(_ matrix: OpenCLWeightMatrix, activations: OpenCLBuffer, count: Int,
                         into y: OpenCLBuffer) throws {
        let suffix = try rowKernelSuffix(matrix)
        guard count > 0 else { throw OpenCLError.invalidArgument("\(matrix.name): matmul over \(count) vectors") }
        let stride = Self.activationBytes(matrix.activationType, length: matrix.columns)
        try activations.require(stride * count)
        try y.require(matrix.rows * count * 4)
        let k = try kernel("matmul_" + suffix)
        try k.setArguments([.buffer(matrix.buffer), .uint64(UInt64(matrix.rowBytes)), .int32(blocks(matrix)),
                            .int32(Int32(matrix.rows)), .buffer(activations), .uint64(UInt64(stride)), .buffer(y)])
        let group = OpenCLMatrixKernelSource.rowGroupSize
        try device.enqueue(k, globalSizes: [matrix.rows * group, count], localSizes: [group, 1])
    }

    /// y[k] = row ids[k] · activations for k < count (ids: Int32 on the device). An id outside
    /// the matrix gives y[k] = NaN; `ids(_:for:)` checks host ids before upload.
    func multiply(_ matrix: OpenCLWeightMatrix, gathering ids: OpenCLBuffer, count: Int,
                         activations: OpenCLBuffer, into y: OpenCLBuffer) throws {
        let suffix = try rowKernelSuffix(matrix)
        guard count >= 0 else { throw OpenCLError.invalidArgument("\(matrix.name): negative gather count \(count)") }
        guard count > 0 else { return }
        try ids.require(count * 4)
        try activations.require(Self.activationBytes(matrix.activationType, length: matrix.columns))
        try y.require(count * 4)
        let k = try kernel("gather_" + suffix)
        try k.setArguments([.buffer(matrix.buffer), .uint64(UInt64(matrix.rowBytes)), .int32(blocks(matrix)),
                            .int32(Int32(matrix.rows)), .buffer(activations), .buffer(ids), .buffer(y)])
        let group = OpenCLMatrixKernelSource.rowGroupSize
        try device.enqueue(k, globalSize: count * group, localSize: group)
    }

    /// y[0..<columns] += Σ_k coefficients[k] · row ids[k], for a neuron-major matrix (Q8_0,
    /// Q4_0 or F16 rows). An id outside the matrix makes y NaN.
    func accumulate(_ matrix: OpenCLWeightMatrix, rows ids: OpenCLBuffer, coefficients: OpenCLBuffer,
                           count: Int, into y: OpenCLBuffer) throws {
        let name: String
        switch matrix.type {
        case .q8_0: name = "accumulate_q8_0"
        case .q4_0: name = "accumulate_q4_0"
        case .f16: name = "accumulate_f16"
        default: throw OpenCLError.unsupportedType(matrix: matrix.name, type: matrix.type, operation: "column-gather")
        }
        guard count >= 0 else { throw OpenCLError.invalidArgument("\(matrix.name): negative gather count \(count)") }
        guard count > 0 else { return }
        try ids.require(count * 4)
        try coefficients.require(count * 4)
        try y.require(matrix.columns * 4)
        let k = try kernel(name)
        try k.setArguments([.buffer(matrix.buffer), .uint64(UInt64(matrix.rowBytes)), .int32(Int32(matrix.columns)),
                            .int32(Int32(matrix.rows)), .buffer(ids), .buffer(coefficients), .int32(Int32(count)),
                            .buffer(y)])
        try device.enqueue(k, globalSize: matrix.columns, localSize: OpenCLMatrixKernelSource.elementGroupSize)
    }

    /// `rows` uploaded as an Int32 id buffer after checking each lies inside `matrix`.
    func ids(_ rows: [Int32], for matrix: OpenCLWeightMatrix, label: String = "row ids") throws -> OpenCLBuffer {
        if let bad = rows.first(where: { $0 < 0 || Int($0) >= matrix.rows }) {
            throw OpenCLError.invalidArgument("\(matrix.name): row id \(bad) outside 0..<\(matrix.rows)")
        }
        return try device.makeBuffer(copying: rows, label: label)
    }

    private func rowKernelSuffix(_ matrix: OpenCLWeightMatrix) throws -> String {
        guard Self.supportedTypes.contains(matrix.type), let suffix = Self.kernelSuffix(matrix.type) else {
            throw OpenCLError.unsupportedType(matrix: matrix.name, type: matrix.type, operation: "matvec")
        }
        return suffix
    }

    /// Blocks per row as the row kernels count them (F32/F16: elements).
    private func blocks(_ matrix: OpenCLWeightMatrix) -> Int32 {
        Int32(matrix.columns / matrix.type.blockSize)
    }
}
