import CEmberKernels

/// Scans tensor data for NaN and infinities, dequantizing block by block with the kernels'
/// own dequantizers, so a damaged scale in a quantized block is found as surely as a bad float.
extension GGUFFile {
    /// Elements dequantized at a time: a whole number of blocks of every type (32 and 256), so
    /// the scratch stays small however long a row is.
    private static let scanChunk = 1 << 16

    /// The index of the first NaN or infinite element of `tensor`, nil when all are finite or
    /// its type cannot hold them (integer types) or has no dequantizer in Ember (those tensors
    /// cannot be computed, and loading a model refuses them anyway).
    func firstNonFiniteElement(of tensor: GGUFTensorInfo) -> Int? {
        let code = Int32(tensor.type.rawValue)
        let blockSize = Int(ember_block_size(code))
        guard blockSize > 0 else { return nil }
        let data = self.data(of: tensor)
        if tensor.type == .f32 {
            let floats = UnsafeBufferPointer(start: data.assumingMemoryBound(to: Float.self), count: tensor.elementCount)
            return FiniteValues.firstNonFinite(floats)
        }
        let blockBytes = Int(ember_block_bytes(code))
        let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: min(Self.scanChunk, tensor.elementCount))
        defer { scratch.deallocate() }
        var done = 0
        while done < tensor.elementCount {
            let n = min(Self.scanChunk, tensor.elementCount - done)
            ember_dequantize_row(code, data + done / blockSize * blockBytes, scratch.baseAddress!, Int64(n))
            if let i = FiniteValues.firstNonFinite(UnsafeBufferPointer(rebasing: scratch[0..<n])) { return done + i }
            done += n
        }
        return nil
    }

    /// Throws `GGUFError.nonFiniteValue` for the first tensor (in file order) holding a NaN or
    /// an infinity; `progress` hears the bytes scanned after each tensor. Reads every byte of
    /// the file's tensors: seconds for a multi-gigabyte model.
    func checkTensorValues(progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        let total = tensors.reduce(0) { $0 + $1.byteCount }
        var done = 0
        for tensor in tensors {
            if let index = firstNonFiniteElement(of: tensor) {
                throw GGUFError.nonFiniteValue(path: path, tensor: tensor.name, index: index)
            }
            done += tensor.byteCount
            progress?(done, total)
        }
    }
}

/// The tensor scan for callers outside the library (`--check-tensors`).
public enum TensorValueCheck {
    /// Throws `GGUFError.nonFiniteValue` naming the first tensor of the GGUF file at `path`
    /// that holds a NaN or an infinity (and the reader's errors for a file it rejects).
    public static func scan(path: String, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        try GGUFFile(path: path).checkTensorValues(progress: progress)
    }
}
