#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds a GGUF v3 file: metadata in insertion order, then tensors whose bytes are produced one
/// at a time (so a multi-gigabyte model never sits in memory whole). `write(to:)` writes to a
/// temporary name beside the target and renames it, so a failed write leaves no partial file.
public struct GGUFWriter {
    public struct PendingTensor {
        public let name: String
        public let dims: [Int]
        public let type: TensorType
        public let fill: (UnsafeMutableRawBufferPointer) throws -> Void

        public var byteCount: Int { type.byteCount(elements: dims.reduce(1, *)) ?? 0 }
    }

    public var magic: [UInt8] = Array("GGUF".utf8)
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    public private(set) var tensors: [PendingTensor] = []
    public let alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i].value = value
        } else {
            metadata.append((key, value))
        }
    }

    /// Adds a tensor; `fill` receives a zeroed buffer of exactly the tensor's byte count.
    public mutating func addTensor(_ name: String, type: TensorType, dims: [Int],
                                   fill: @escaping (UnsafeMutableRawBufferPointer) throws -> Void) {
        tensors.append(PendingTensor(name: name, dims: dims, type: type, fill: fill))
    }

    /// Adds a tensor from bytes already in memory.
    public mutating func addTensor(_ name: String, type: TensorType, dims: [Int], bytes: [UInt8]) {
        addTensor(name, type: type, dims: dims) { buffer in
            precondition(buffer.count == bytes.count, "tensor \(name): \(bytes.count) bytes given, \(buffer.count) expected")
            buffer.copyBytes(from: bytes)
        }
    }

    /// Adds an F32 tensor.
    public mutating func addTensor(_ name: String, dims: [Int], floats: [Float]) {
        addTensor(name, type: .f32, dims: dims) { buffer in
            precondition(buffer.count == floats.count * 4, "tensor \(name): wrong element count")
            floats.withUnsafeBytes { buffer.copyMemory(from: $0) }
        }
    }

    /// The header (magic through tensor descriptions, padded to the alignment).
    func header() -> [UInt8] {
        var out: [UInt8] = magic
        out.appendLE(UInt32(3))
        out.appendLE(UInt64(tensors.count))
        out.appendLE(UInt64(metadata.count))
        for (key, value) in metadata {
            out.appendString(key)
            out.appendLE(value.type.rawValue)
            out.appendValue(value)
        }
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
    public func serialized() throws -> [UInt8] {
        var out = header()
        for t in tensors {
            var data = [UInt8](repeating: 0, count: Self.padded(t.byteCount, to: alignment))
            try data.withUnsafeMutableBytes { try t.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<t.byteCount])) }
            out += data
        }
        return out
    }

    /// Writes the file atomically: to `path.tmp-PID`, then renamed over `path`.
    public func write(to path: String, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        let temporary = path + ".tmp-\(getpid())"
        guard let file = fopen(temporary, "wb") else {
            throw GGUFError.writeFailed(path: path, reason: String(cString: strerror(errno)))
        }
        var closed = false
        defer {
            if !closed { fclose(file) }
            unlink(temporary)  // no-op once renamed
        }
        func put(_ bytes: UnsafeRawBufferPointer) throws {
            guard bytes.count == 0 || fwrite(bytes.baseAddress, 1, bytes.count, file) == bytes.count else {
                throw GGUFError.writeFailed(path: path, reason: String(cString: strerror(errno)))
            }
        }
        try header().withUnsafeBytes(put)
        let total = tensors.reduce(0) { $0 + $1.byteCount }
        var done = 0
        for t in tensors {
            let padded = Self.padded(t.byteCount, to: alignment)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(padded, 1), alignment: 64)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            try t.fill(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<t.byteCount]))
            try put(UnsafeRawBufferPointer(rebasing: buffer[0..<padded]))
            done += t.byteCount
            progress?(done, total)
        }
        guard fflush(file) == 0, fsync(fileno(file)) == 0 else {
            throw GGUFError.writeFailed(path: path, reason: String(cString: strerror(errno)))
        }
        fclose(file)
        closed = true
        guard rename(temporary, path) == 0 else {
            throw GGUFError.writeFailed(path: path, reason: String(cString: strerror(errno)))
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
