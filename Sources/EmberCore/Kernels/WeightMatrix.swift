import CEmberKernels

/// A weight matrix in place in the model file: `rows` output rows of `columns` inputs each,
/// row-major, quant blocks along the row.
struct WeightMatrix: @unchecked Sendable {
    let name: String
    let type: TensorType
    let rows: Int
    let columns: Int
    let rowBytes: Int
    let data: UnsafeRawPointer

    init(name: String, type: TensorType, rows: Int, columns: Int, data: UnsafeRawPointer) {
        self.name = name
        self.type = type
        self.rows = rows
        self.columns = columns
        self.rowBytes = type.byteCount(elements: columns)!
        self.data = data
    }

    var byteCount: Int { rows * rowBytes }

    /// The format activations must be converted to before they meet this matrix.
    var activationType: TensorType {
        TensorType(rawValue: UInt32(ember_activation_type(Int32(type.rawValue))))!
    }

    /// y[r - rows.lowerBound] = row r · activations, for r in `rows`.
    @inline(__always)
    func multiply(_ activations: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>, rows range: Range<Int>) {
        ember_matvec(Int32(type.rawValue), Int64(columns), data, rowBytes, activations, y,
                     Int64(range.lowerBound), Int64(range.upperBound))
    }

    /// For each of `count` activation vectors (`stride` bytes apart) and each row r in `rows`:
    /// y[c * ldy + r] = row r · activations[c].
    @inline(__always)
    func multiply(_ activations: UnsafeRawPointer, stride: Int, count: Int,
                  into y: UnsafeMutablePointer<Float>, ldy: Int, rows range: Range<Int>) {
        ember_matmul(Int32(type.rawValue), Int64(columns), data, rowBytes, activations, stride, Int64(count),
                     y, Int64(ldy), Int64(range.lowerBound), Int64(range.upperBound))
    }

    /// Copies rows `rows` (in that order) one after another into `destination` (room for
    /// `rows.count * rowBytes` bytes): a selection of neurons as a matrix of its own.
    func copyRows(_ rows: [Int32], to destination: UnsafeMutableRawPointer) {
        for (k, row) in rows.enumerated() {
            (destination + k * rowBytes).copyMemory(from: data + Int(row) * rowBytes, byteCount: rowBytes)
        }
    }

    /// Row `r` expanded to floats.
    func dequantizeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        ember_dequantize_row(Int32(type.rawValue), data + r * rowBytes, out, Int64(columns))
    }
}

/// Float vectors converted to a weight type's activation format, ready for integer dots.
/// One buffer holds up to `capacity` vectors of `length` elements, `stride` bytes apart.
final class ActivationBuffer {
    let type: TensorType
    let length: Int
    let capacity: Int
    let stride: Int
    let bytes: UnsafeMutableRawPointer

    init(type: TensorType, length: Int, capacity: Int) {
        self.type = type
        self.length = length
        self.capacity = capacity
        // Vectors start on cache lines so AVX2 loads never split them.
        stride = (ember_activation_bytes(Int32(type.rawValue), Int64(length)) + 63) / 64 * 64
        bytes = UnsafeMutableRawPointer.allocate(byteCount: max(stride * capacity, 64), alignment: 64)
    }

    deinit { bytes.deallocate() }

    /// Converts `x` (length floats) into vector slot `index`.
    @inline(__always)
    func store(_ x: UnsafePointer<Float>, at index: Int) {
        ember_quantize_activations(Int32(type.rawValue), x, bytes + index * stride, Int64(length))
    }

    func vector(_ index: Int) -> UnsafeRawPointer { UnsafeRawPointer(bytes + index * stride) }
}

/// Activation buffers by format and length, made on first use. Each thread owns its own set.
final class ActivationBuffers {
    private var buffers: [Int: ActivationBuffer] = [:]

    func buffer(type: TensorType, length: Int, capacity: Int) -> ActivationBuffer {
        let key = Int(type.rawValue) << 32 | length
        if let b = buffers[key] { return b }
        let b = ActivationBuffer(type: type, length: length, capacity: capacity)
        buffers[key] = b
        return b
    }
}
