/// Where a tensor's data lies in a GGUF file and how to read it.
struct GGUFTensorInfo: Sendable, Equatable {
    let name: String
    /// Dimensions in GGUF order: `dims[0]` is the row length (contiguous elements).
    let dims: [Int]
    let type: TensorType
    /// Absolute byte offset of the data in the file.
    let offset: Int
    let byteCount: Int

    var elementCount: Int { dims.reduce(1, *) }
    var rowLength: Int { dims.first ?? 1 }
    var rowCount: Int { dims.dropFirst().reduce(1, *) }
    var rowBytes: Int { byteCount / max(rowCount, 1) }
}

/// A parsed GGUF file (v2 or v3, or PowerInfer's variant with the `PWRI` magic).
/// Metadata is parsed eagerly; tensor data stays in the mapped file.
final class GGUFFile: @unchecked Sendable {
    enum Flavor: Sendable { case gguf, powerInfer }

    let path: String
    let flavor: Flavor
    let version: UInt32
    /// Metadata in file order.
    let metadataKeys: [String]
    let metadata: [String: GGUFValue]
    let tensors: [GGUFTensorInfo]
    let alignment: Int
    /// Absolute offset of the tensor data section.
    let dataOffset: Int
    let file: MappedFile
    private let tensorIndex: [String: Int]

    /// Arrays may nest this deep; deeper nesting is rejected so a hostile file cannot exhaust the stack.
    static let maxArrayDepth = ReaderLimits.arrayDepth.range.upperBound
    /// ggml tensors have at most four dimensions.
    static let maxDims = ReaderLimits.dimensions.range.upperBound

    convenience init(path: String) throws {
        try self.init(file: try MappedFile(path: path))
    }

    /// Parses the header of a mapped file. Every count and size read from it is checked against
    /// `ReaderLimits` and against the bytes left before anything is allocated for it; tensor
    /// names must be unique and of bounded length; tensor data must lie inside the file, aligned,
    /// without two tensors sharing bytes.
    init(file: MappedFile) throws {
        self.file = file
        self.path = file.path
        var reader = ByteReader(bytes: file.bytes, path: file.path)

        let magic = try reader.bytes(4, reading: "magic")
        switch magic {
        case Array("GGUF".utf8): flavor = .gguf
        case Array("PWRI".utf8): flavor = .powerInfer
        default: throw GGUFError.badMagic(path: path, found: magic)
        }
        version = try reader.u32(reading: "version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: path, version: version) }

        let tensorCount = try reader.u64(reading: "tensor count")
        let keyCount = try reader.u64(reading: "metadata count")
        // A key-value pair takes at least 13 bytes (empty key, type, one-byte value); a tensor
        // description at least 33 (one-byte name, one dimension, type, offset).
        guard keyCount <= UInt64(reader.remaining / 13) else {
            throw GGUFError.absurdCount(path: path, what: "metadata count", count: keyCount)
        }
        guard tensorCount <= UInt64(reader.remaining / 33) else {
            throw GGUFError.absurdCount(path: path, what: "tensor count", count: tensorCount)
        }
        try ReaderLimits.metadataCount.check(keyCount, what: "metadata count", file: path)
        try ReaderLimits.tensorCount.check(tensorCount, what: "tensor count", file: path)

        var keys: [String] = []
        var values: [String: GGUFValue] = [:]
        keys.reserveCapacity(Int(keyCount))
        for _ in 0..<keyCount {
            let key = try reader.string(reading: "metadata key")
            let code = try reader.u32(reading: "value type of \(SafeText.quoted(key))")
            guard let type = GGUFValueType(rawValue: code) else {
                throw GGUFError.unknownValueType(path: path, key: key, code: code)
            }
            let value = try reader.value(of: type, key: key, depth: 0)
            guard values[key] == nil else { throw GGUFError.duplicateKey(path: path, key: key) }
            keys.append(key)
            values[key] = value
        }
        metadataKeys = keys
        metadata = values

        var alignment = 32
        if let value = values["general.alignment"] {
            // An integer power of two (a bool would pass intValue as 1, but is not a count).
            guard let a = value.intValue, a > 0, a & (a - 1) == 0, value.type != .bool else {
                throw GGUFError.badAlignment(path: path, alignment: value.intValue ?? -1)
            }
            alignment = a
        }
        self.alignment = alignment

        struct RawTensor { let name: String; let dims: [Int]; let type: TensorType; let offset: UInt64; let bytes: Int }
        var raw: [RawTensor] = []
        var index: [String: Int] = [:]
        raw.reserveCapacity(Int(tensorCount))
        for _ in 0..<tensorCount {
            let nameAt = reader.offset
            let name = try reader.string(reading: "tensor name")
            guard ReaderLimits.tensorNameLength.range.contains(name.utf8.count) else {
                throw LimitError.outOfRange(path: path, what: "tensor name at byte \(nameAt)", subject: name,
                                            value: "\(name.utf8.count) bytes long", limit: ReaderLimits.tensorNameLength)
            }
            let dimCount = try reader.u32(reading: "dimension count of \(SafeText.quoted(name))")
            guard ReaderLimits.dimensions.range.contains(Int(dimCount)) else {
                throw GGUFError.badDimensions(path: path, tensor: name, dims: [UInt64(dimCount)])
            }
            var rawDims: [UInt64] = []
            for _ in 0..<dimCount { rawDims.append(try reader.u64(reading: "dimensions of \(SafeText.quoted(name))")) }
            let code = try reader.u32(reading: "type of \(SafeText.quoted(name))")
            guard let type = TensorType(rawValue: code) else {
                throw GGUFError.unknownTensorType(path: path, tensor: name, code: code)
            }
            let offset = try reader.u64(reading: "offset of \(SafeText.quoted(name))")

            // Every dimension within its limit and the element count too (so no product
            // overflows); the row length a whole number of blocks.
            var elements = 1
            for d in rawDims {
                guard d <= UInt64(ReaderLimits.dimensionLength.range.upperBound),
                      ReaderLimits.dimensionLength.range.contains(Int(d)) else {
                    throw GGUFError.badDimensions(path: path, tensor: name, dims: rawDims)
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
                guard !overflow, ReaderLimits.tensorElements.range.contains(product) else {
                    throw GGUFError.badDimensions(path: path, tensor: name, dims: rawDims)
                }
                elements = product
            }
            guard Int(rawDims[0]) % type.blockSize == 0, let bytes = type.byteCount(elements: elements) else {
                throw GGUFError.badDimensions(path: path, tensor: name, dims: rawDims)
            }
            guard offset % UInt64(alignment) == 0 else {
                throw GGUFError.misalignedTensor(path: path, tensor: name, offset: offset)
            }
            guard index[name] == nil else { throw GGUFError.duplicateTensor(path: path, tensor: name) }
            index[name] = raw.count
            raw.append(RawTensor(name: name, dims: rawDims.map { Int($0) }, type: type, offset: offset, bytes: bytes))
        }

        let headerEnd = reader.offset
        let fileSize = file.bytes.count
        // The data section starts at the header's end rounded up to the alignment; past the end
        // of the file, no tensor can lie in it (and a huge alignment must not overflow).
        let (roundedUp, wraps) = headerEnd.addingReportingOverflow(alignment - 1)
        let dataStart = wraps ? Int.max : roundedUp / alignment * alignment
        dataOffset = dataStart
        var infos: [GGUFTensorInfo] = []
        infos.reserveCapacity(raw.count)
        for t in raw {
            let (start, overflowStart) = t.offset.addingReportingOverflow(UInt64(dataStart))
            let (end, overflowEnd) = start.addingReportingOverflow(UInt64(t.bytes))
            guard !overflowStart, !overflowEnd, end <= UInt64(fileSize) else {
                throw GGUFError.tensorOutOfBounds(path: path, tensor: t.name, end: overflowStart || overflowEnd ? UInt64.max : end,
                                                  fileSize: fileSize)
            }
            infos.append(GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, offset: Int(start), byteCount: t.bytes))
        }
        // No two tensors may share bytes: a crafted file could otherwise alias one weight's
        // bytes as another's, which no writer does.
        let byOffset = infos.indices.sorted { infos[$0].offset < infos[$1].offset }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where infos[a].offset + infos[a].byteCount > infos[b].offset {
            throw GGUFError.overlappingTensors(path: path, tensor: infos[b].name, other: infos[a].name)
        }
        tensors = infos
        tensorIndex = index
    }

    // MARK: tensors

    func tensorInfo(_ name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    func hasTensor(_ name: String) -> Bool { tensorIndex[name] != nil }

    /// The bytes of a tensor, in place in the mapped file. The pointer is valid only while this
    /// GGUFFile (and so its mapping) is alive.
    func data(of tensor: GGUFTensorInfo) -> UnsafeRawPointer {
        file.bytes.baseAddress! + tensor.offset
    }

    // MARK: metadata, typed

    func value(_ key: String) -> GGUFValue? { metadata[key] }

    func int(_ key: String) throws -> Int? {
        guard let v = metadata[key] else { return nil }
        guard let i = v.intValue else { throw wrongType(key, "an integer", v) }
        return i
    }

    func requiredInt(_ key: String) throws -> Int {
        guard let i = try int(key) else { throw GGUFError.missingKey(path: path, key: key) }
        return i
    }

    func float(_ key: String) throws -> Double? {
        guard let v = metadata[key] else { return nil }
        guard let f = v.floatValue else { throw wrongType(key, "a number", v) }
        return f
    }

    func string(_ key: String) throws -> String? {
        guard let v = metadata[key] else { return nil }
        guard let s = v.stringValue else { throw wrongType(key, "a string", v) }
        return s
    }

    func requiredString(_ key: String) throws -> String {
        guard let s = try string(key) else { throw GGUFError.missingKey(path: path, key: key) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = metadata[key] else { return nil }
        if let b = v.boolValue { return b }
        throw wrongType(key, "a bool", v)
    }

    func stringArray(_ key: String) throws -> [String]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(.string, let items) = v else { throw wrongType(key, "an array of strings", v) }
        return items.map { $0.stringValue! }
    }

    func floatArray(_ key: String) throws -> [Float]? {
        guard let v = metadata[key] else { return nil }
        guard let items = v.arrayValue, let floats = Optional(items.compactMap { $0.floatValue }), floats.count == items.count else {
            throw wrongType(key, "an array of numbers", v)
        }
        return floats.map { Float($0) }
    }

    func intArray(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        guard let items = v.arrayValue, let ints = Optional(items.compactMap { $0.intValue }), ints.count == items.count else {
            throw wrongType(key, "an array of integers", v)
        }
        return ints
    }

    private func wrongType(_ key: String, _ expected: String, _ found: GGUFValue) -> GGUFError {
        var shown = found.type.description
        if case .array(let element, _) = found { shown = "an array of \(element)" }
        return GGUFError.wrongKeyType(path: path, key: key, expected: expected, found: shown)
    }
}

/// Bounds-checked little-endian reading over the mapped bytes. What is being read is named
/// only when an error needs it (the names are built lazily: a vocabulary has 10^5 strings).
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0
    /// Metadata values read so far, over all arrays (each costs memory, whatever its size on disk).
    var valueCount = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ count: Int, reading: @autoclosure () -> String) throws -> Int {
        guard count >= 0, count <= remaining else {
            throw GGUFError.truncated(path: path, reading: reading(), offset: offset)
        }
        let start = offset
        offset += count
        return start
    }

    mutating func bytes(_ count: Int, reading: @autoclosure () -> String) throws -> [UInt8] {
        let start = try take(count, reading: reading())
        return Array(bytes[start..<start + count])
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type, reading: @autoclosure () -> String) throws -> T {
        let start = try take(MemoryLayout<T>.size, reading: reading())
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: start, as: T.self))
    }

    mutating func u32(reading: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, reading: reading()) }
    mutating func u64(reading: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, reading: reading()) }

    /// A length-prefixed UTF-8 string, its length bounded by the bytes left and by the limit.
    mutating func string(reading: @autoclosure () -> String) throws -> String {
        let at = offset
        let length = try u64(reading: reading())
        guard length <= UInt64(remaining) else {
            throw GGUFError.truncated(path: path, reading: reading(), offset: at)
        }
        guard length <= UInt64(ReaderLimits.stringLength.range.upperBound) else {
            throw LimitError.outOfRange(path: path, what: "\(reading()) at byte \(at)", subject: nil,
                                        value: "\(length) bytes long", limit: ReaderLimits.stringLength)
        }
        let start = try take(Int(length), reading: reading())
        let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(length)])
        guard let s = String(validating: slice.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw GGUFError.invalidUTF8(path: path, offset: at)
        }
        return s
    }

    mutating func value(of type: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        valueCount += 1
        guard valueCount <= ReaderLimits.metadataValues.range.upperBound else {
            throw LimitError.outOfRange(path: path, what: "metadata values up to key", subject: key,
                                        value: String(valueCount), limit: ReaderLimits.metadataValues)
        }
        func reading() -> String { "value of \(SafeText.quoted(key))" }
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, reading: reading()))
        case .int8: return .int8(try load(Int8.self, reading: reading()))
        case .uint16: return .uint16(try load(UInt16.self, reading: reading()))
        case .int16: return .int16(try load(Int16.self, reading: reading()))
        case .uint32: return .uint32(try load(UInt32.self, reading: reading()))
        case .int32: return .int32(try load(Int32.self, reading: reading()))
        case .uint64: return .uint64(try load(UInt64.self, reading: reading()))
        case .int64: return .int64(try load(Int64.self, reading: reading()))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, reading: reading())))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, reading: reading())))
        case .bool: return .bool(try load(UInt8.self, reading: reading()) != 0)
        case .string: return .string(try string(reading: reading()))
        case .array:
            guard depth < GGUFFile.maxArrayDepth else { throw GGUFError.arrayTooDeep(path: path, key: key) }
            let code = try u32(reading: "array type of \(SafeText.quoted(key))")
            guard let element = GGUFValueType(rawValue: code) else {
                throw GGUFError.unknownValueType(path: path, key: key, code: code)
            }
            let count = try u64(reading: "array length of \(SafeText.quoted(key))")
            // Each element takes at least one byte (strings eight, arrays twelve).
            let minimum = element.fixedSize ?? (element == .string ? 8 : 12)
            guard count <= UInt64(remaining / minimum) else {
                throw GGUFError.absurdCount(path: path, what: "array \(SafeText.quoted(key)) length", count: count)
            }
            try ReaderLimits.arrayLength.check(count, what: "length of the array", subject: key, file: path)
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<count { items.append(try value(of: element, key: key, depth: depth + 1)) }
            return .array(element, items)
        }
    }
}
