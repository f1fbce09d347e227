/// Builds a GGUF file (v3 unless told otherwise): metadata in insertion order, then tensors whose
/// bytes are produced one at a time (so a multi-gigabyte model never sits in memory whole).
/// `write(to:)` validates everything first, then writes through `AtomicFileWriter`, so a failed
/// write leaves no partial file and never replaces a good one (nor anything but a regular file).
struct GGUFWriter {
    struct PendingTensor {
        let name: String
        let dims: [Int]
        let type: TensorType
        let fill: (UnsafeMutableRawBufferPointer) throws -> Void
        /// Bytes the caller handed over up front, checked against the shape before writing.
        let suppliedByteCount: Int?

        var byteCount: Int { Self.byteCount(type: type, dims: dims) ?? 0 }

        static func byteCount(type: TensorType, dims: [Int]) -> Int? {
            var elements = 1
            for d in dims {
                guard d >= 1 else { return nil }
                let (product, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow else { return nil }
                elements = product
            }
            return type.byteCount(elements: elements)
        }
    }

    var magic: [UInt8] = Array("GGUF".utf8)
    /// GGUF version written; 2 and 3 share the little-endian layout.
    var version: UInt32 = 3
    private(set) var metadata: [(key: String, value: GGUFValue)] = []
    private(set) var tensors: [PendingTensor] = []

    /// Tensor data alignment: `general.alignment` when set (readers honour it), else GGUF's 32.
    var alignment: Int {
        metadata.first(where: { $0.key == "general.alignment" })?.value.intValue ?? 32
    }

    init() {}

    /// A writer holding everything `file` holds: its magic, metadata in order, and tensors in
    /// order, whose bytes are read from the mapped file as they are written.
    init(copying file: GGUFFile) {
        magic = file.flavor == .powerInfer ? Array("PWRI".utf8) : Array("GGUF".utf8)
        version = file.version
        for key in file.metadataKeys { if let value = file.value(key) { set(key, value) } }
        for info in file.tensors { addTensor(copying: info, of: file) }
    }

    /// Adds tensor `info` of `file`, its bytes copied as they are.
    mutating func addTensor(copying info: GGUFTensorInfo, of file: GGUFFile, as name: String? = nil) {
        let count = info.byteCount
        // The closure holds the file, so its mapping lives until the bytes are written.
        tensors.append(PendingTensor(name: name ?? info.name, dims: info.dims, type: info.type,
                                     fill: { $0.copyMemory(from: UnsafeRawBufferPointer(start: file.data(of: info), count: min(count, $0.count))) },
                                     suppliedByteCount: count))
    }

    /// Drops the metadata keys and the tensors for which `key` / `tensor` say so.
    mutating func remove(keys key: (String) -> Bool = { _ in false }, tensors tensor: (String) -> Bool = { _ in false }) {
        metadata.removeAll { key($0.key) }
        tensors.removeAll { tensor($0.name) }
    }

    /// Sets a metadata key; setting a key again replaces its value in place (keys stay unique).
    mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i].value = value
        } else {
            metadata.append((key, value))
        }
    }

    /// Adds a tensor; `fill` receives a zeroed buffer of exactly the tensor's byte count.
    mutating func addTensor(_ name: String, type: TensorType, dims: [Int],
                                   fill: @escaping (UnsafeMutableRawBufferPointer) throws -> Void) {
        tensors.append(PendingTensor(name: name, dims: dims, type: type, fill: fill, suppliedByteCount: nil))
    }

    /// Adds a tensor from bytes already in memory.
    mutating func addTensor(_ name: String, type: TensorType, dims: [Int], bytes: [UInt8]) {
        tensors.append(PendingTensor(name: name, dims: dims, type: type,
                                     fill: { $0.copyBytes(from: bytes.prefix($0.count)) },
                                     suppliedByteCount: bytes.count))
    }

    /// Adds an F32 tensor.
    mutating func addTensor(_ name: String, dims: [Int], floats: [Float]) {
        tensors.append(PendingTensor(name: name, dims: dims, type: .f32,
                                     fill: { buffer in floats.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(buffer.count))) } },
                                     suppliedByteCount: floats.count * 4))
    }

    /// Checks that the file would read back: the errors are the ones `GGUFFile` would raise for
    /// the same fault, with `path` naming the target.
    func validate(path: String = "<GGUFWriter>") throws {
        guard magic == Array("GGUF".utf8) || magic == Array("PWRI".utf8) else {
            throw GGUFError.badMagic(path: path, found: magic)
        }
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: path, version: version) }
        if let value = metadata.first(where: { $0.key == "general.alignment" })?.value {
            guard let a = value.intValue, a > 0, a & (a - 1) == 0, value.type != .bool else {
                throw GGUFError.badAlignment(path: path, alignment: value.intValue ?? -1)
            }
        }
        for (key, value) in metadata { try Self.checkValue(value, key: key, path: path, depth: 0) }
        var names = Set<String>()
        for t in tensors {
            guard !t.dims.isEmpty, t.dims.count <= GGUFFile.maxDims, t.dims.allSatisfy({ $0 >= 1 && $0 <= Int(Int32.max) }),
                  t.dims[0] % t.type.blockSize == 0, let bytes = PendingTensor.byteCount(type: t.type, dims: t.dims) else {
                throw GGUFError.badDimensions(path: path, tensor: t.name, dims: t.dims.map { UInt64(bitPattern: Int64($0)) })
            }
            if let supplied = t.suppliedByteCount, supplied != bytes {
                throw GGUFError.writeFailed(path: path, reason: "tensor \"\(t.name)\": \(supplied) bytes given, \(bytes) expected for \(t.type) \(t.dims)")
            }
            guard names.insert(t.name).inserted else { throw GGUFError.duplicateTensor(path: path, tensor: t.name) }
            try ReaderLimits.tensorNameLength.check(t.name.utf8.count, what: "length in bytes of tensor name", subject: t.name, file: path)
        }
    }

    /// Arrays must hold only their declared element type, and nest no deeper than readers allow.
    private static func checkValue(_ value: GGUFValue, key: String, path: String, depth: Int) throws {
        guard case .array(let element, let items) = value else { return }
        guard depth < GGUFFile.maxArrayDepth else { throw GGUFError.arrayTooDeep(path: path, key: key) }
        for item in items {
            guard item.type == element else {
                throw GGUFError.wrongKeyType(path: path, key: key, expected: "array items of type \(element)",
                                             found: "an item of type \(item.type)")
            }
            try checkValue(item, key: key, path: path, depth: depth + 1)
        }
    }

    /// The header (magic through tensor descriptions, padded to the alignment).
    func header() -> [UInt8] {
        var out: [UInt8] = magic
        out.appendLE(version)
        out.appendLE(UInt64(tensors.count))
        out.appendLE(UInt64(metadata.count))
        for (key, value) in metadata {
            out.appendString(key)
            out.appendLE(value.type.rawValue)
            out.appendValue(value)
        }
        let alignment = self.alignment
        var offset = 0
        for t in tensors {
            out.appendString(t.name)
            out.appendLE(UInt32(t.dims.count))
            for d in t.dims { out.appendLE(UInt64(d)) }
            out.appendLE(t.type.rawValue)
            out.appendLE(UInt64(offset))
            offset += Self.padded(t.byteCount, to: alignment)
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: Self.padded(out.count, to: alignment) - out.count))
        return out
    }

    static func padded(_ n: Int, to alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// The whole file in memory (for tests and small files).
    func serialized() throws -> [UInt8] {
        try validate()
        var out = header()
        let alignment = self.alignment
        for t in tensors {
            var data = [UInt8](repeating: 0, count: Self.padded(t.byteCount, to: alignment))
            try data.withUnsafeMutableBytes { try t.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<t.byteCount])) }
            out += data
        }
        return out
    }

    /// Writes the file atomically through `AtomicFileWriter`: validated first, written to a
    /// temporary file beside `path`, flushed to disk, then renamed over `path`. A target that
    /// exists and is not a regular file is refused; on any failure the target is left as it was.
    func write(to path: String, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        try validate(path: path)
        try AtomicFileWriter.write(to: path) { file in
            try header().withUnsafeBytes { try file.write($0) }
            let alignment = self.alignment
            let total = tensors.reduce(0) { $0 + $1.byteCount }
            var done = 0
            for t in tensors {
                let padded = Self.padded(t.byteCount, to: alignment)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(padded, 1), alignment: 64)
                defer { buffer.deallocate() }
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                try t.fill(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<t.byteCount]))
                try file.write(UnsafeRawBufferPointer(rebasing: buffer[0..<padded]))
                done += t.byteCount
                progress?(done, total)
            }
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ v: T) {
        Swift.withUnsafeBytes(of: v.littleEndian) { append(contentsOf: $0) }
    }

    mutating func appendString(_ s: String) {
        let utf8 = Array(s.utf8)
        appendLE(UInt64(utf8.count))
        append(contentsOf: utf8)
    }

    mutating func appendValue(_ value: GGUFValue) {
        switch value {
        case .uint8(let v): appendLE(v)
        case .int8(let v): appendLE(v)
        case .uint16(let v): appendLE(v)
        case .int16(let v): appendLE(v)
        case .uint32(let v): appendLE(v)
        case .int32(let v): appendLE(v)
        case .uint64(let v): appendLE(v)
        case .int64(let v): appendLE(v)
        case .float32(let v): appendLE(v.bitPattern)
        case .float64(let v): appendLE(v.bitPattern)
        case .bool(let v): append(v ? 1 : 0)
        case .string(let s): appendString(s)
        case .array(let element, let items):
            appendLE(element.rawValue)
            appendLE(UInt64(items.count))
            for item in items { appendValue(item) }
        }
    }
}
