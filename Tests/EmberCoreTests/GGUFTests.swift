import XCTest
@testable import EmberCore
import EmberDownload
#if canImport(Glibc)
import Glibc
#endif

/// Little-endian byte assembly for hand-built GGUF files: the malformed cases cannot come from
/// GGUFWriter, which refuses to write them.
private struct RawGGUF {
    var bytes: [UInt8] = []

    init(magic: String = "GGUF", version: UInt32 = 3, tensorCount: UInt64, keyCount: UInt64) {
        bytes += Array(magic.utf8)
        u32(version)
        u64(tensorCount)
        u64(keyCount)
    }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }

    mutating func keyU32(_ key: String, _ value: UInt32) {
        string(key)
        u32(GGUFValueType.uint32.rawValue)
        u32(value)
    }

    mutating func keyString(_ key: String, _ value: String) {
        string(key)
        u32(GGUFValueType.string.rawValue)
        string(value)
    }

    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32 = TensorType.f32.rawValue, offset: UInt64 = 0) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }

    /// Pads to the data section and appends `count` bytes of tensor data (0, 1, 2, ...).
    mutating func data(alignment: Int = 32, count: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
        bytes += (0..<count).map { UInt8(truncatingIfNeeded: $0) }
    }
}

final class GGUFTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("ember-gguf-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    // MARK: helpers

    private var fileCounter = 0

    private func path(_ name: String? = nil) -> String {
        fileCounter += 1
        return directory.appendingPathComponent(name ?? "f\(fileCounter).gguf").path
    }

    private func store(_ bytes: [UInt8]) throws -> String {
        let p = path()
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    private func parse(_ bytes: [UInt8]) throws -> GGUFFile {
        try GGUFFile(path: try store(bytes))
    }

    /// Parses bytes that must be rejected, and returns the GGUFError (failing on success or on
    /// any other kind of error).
    private func rejection(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> GGUFError? {
        do {
            _ = try parse(bytes)
            XCTFail("malformed file was accepted", file: file, line: line)
        } catch let error as GGUFError {
            return error
        } catch {
            XCTFail("unexpected error type \(type(of: error)): \(error)", file: file, line: line)
        }
        return nil
    }

    /// `rejection` without the disk: the bytes are parsed from anonymous memory.
    private func memoryRejection(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> GGUFError? {
        do {
            _ = try GGUFFile(file: try MappedFile(bytes: bytes, path: "memory.gguf"))
            XCTFail("malformed bytes were accepted", file: file, line: line)
        } catch let error as GGUFError {
            return error
        } catch {
            XCTFail("unexpected error type \(type(of: error)): \(error)", file: file, line: line)
        }
        return nil
    }

    private func writerRejection(_ writer: GGUFWriter, file: StaticString = #filePath, line: UInt = #line) -> GGUFError? {
        let target = path()
        do {
            try writer.write(to: target)
            XCTFail("writer accepted an invalid file", file: file, line: line)
        } catch let error as GGUFError {
            XCTAssertFalse(FileManager.default.fileExists(atPath: target), "nothing may be written", file: file, line: line)
            return error
        } catch {
            XCTFail("unexpected error type \(type(of: error)): \(error)", file: file, line: line)
        }
        return nil
    }

    private func leftovers() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.contains(".tmp-") }
    }

    /// A small valid file with two keys and two tensors, used as the seed for truncation and
    /// corruption sweeps.
    private func sampleWriter() -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.context_length", .uint32(128))
        w.set("tokenizer.ggml.tokens", .array(.string, [.string("<s>"), .string("a"), .string("b")]))
        w.addTensor("a", dims: [4, 2], floats: (0..<8).map(Float.init))
        w.addTensor("b", type: .q8_0, dims: [32], bytes: [UInt8](repeating: 7, count: 34))
        return w
    }

    // MARK: round trips

    func testEveryValueTypeRoundTrips() throws {
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(.max)), ("i8", .int8(.min)),
            ("u16", .uint16(.max)), ("i16", .int16(.min)),
            ("u32", .uint32(.max)), ("i32", .int32(.min)),
            ("u64", .uint64(.max)), ("i64", .int64(.min)),
            ("f32", .float32(-3.25e-7)), ("f32.inf", .float32(-.infinity)),
            ("f64", .float64(.pi)), ("f64.tiny", .float64(.leastNonzeroMagnitude)),
            ("bool.true", .bool(true)), ("bool.false", .bool(false)),
            ("string", .string("héllo, wörld ✓ 🦙")), ("string.empty", .string("")),
            ("string.nul", .string("a\u{0}b")),
            ("arr.u8", .array(.uint8, [.uint8(0), .uint8(255)])),
            ("arr.i8", .array(.int8, [.int8(-128), .int8(127)])),
            ("arr.u16", .array(.uint16, [.uint16(1), .uint16(65535)])),
            ("arr.i16", .array(.int16, [.int16(-32768)])),
            ("arr.u32", .array(.uint32, [.uint32(1), .uint32(2), .uint32(3)])),
            ("arr.i32", .array(.int32, [.int32(-1), .int32(.max)])),
            ("arr.u64", .array(.uint64, [.uint64(.max)])),
            ("arr.i64", .array(.int64, [.int64(.min), .int64(0)])),
            ("arr.f32", .array(.float32, [.float32(1.5), .float32(-0.0)])),
            ("arr.f64", .array(.float64, [.float64(1e300)])),
            ("arr.bool", .array(.bool, [.bool(true), .bool(false), .bool(true)])),
            ("arr.string", .array(.string, [.string("x"), .string(""), .string("▁the")])),
            ("arr.empty", .array(.float32, [])),
            ("arr.empty.strings", .array(.string, [])),
            ("arr.nested", .array(.array, [
                .array(.string, [.string("a"), .string("b")]),
                .array(.string, []),
                .array(.string, [.string("c")]),
            ])),
            ("arr.nested.deep", .array(.array, [.array(.array, [.array(.uint32, [.uint32(9)])])])),
            ("arr.of.empty.arrays", .array(.array, [.array(.int8, []), .array(.int8, [])])),
            ("", .string("an empty key is legal")),
        ]
        var w = GGUFWriter()
        for (k, v) in values { w.set(k, v) }
        let p = path()
        try w.write(to: p)
        let f = try GGUFFile(path: p)

        XCTAssertEqual(f.flavor, .gguf)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.metadataKeys, values.map(\.0), "keys keep file order")
        for (k, v) in values {
            XCTAssertEqual(f.value(k), v, k)
            XCTAssertEqual(f.value(k)?.type, v.type, k)
        }
        // Negative zero must survive bit for bit, not just compare equal.
        if case .array(_, let items) = f.value("arr.f32")!, case .float32(let z) = items[1] {
            XCTAssertEqual(z.bitPattern, Float(-0.0).bitPattern)
        } else {
            XCTFail("arr.f32 read back wrong")
        }
        XCTAssertTrue(f.tensors.isEmpty)
        XCTAssertEqual(try leftovers(), [])
    }

    func testNaNRoundTripsBitExact() throws {
        var w = GGUFWriter()
        let quiet = Float(bitPattern: 0x7FC0_1234)
        w.set("nan32", .float32(quiet))
        w.set("nan64", .float64(Double(bitPattern: 0x7FF8_0000_0000_0042)))
        let f = try parse(try w.serialized())
        guard case .float32(let a) = f.value("nan32")!, case .float64(let b) = f.value("nan64")! else {
            return XCTFail("wrong types")
        }
        XCTAssertEqual(a.bitPattern, 0x7FC0_1234)
        XCTAssertEqual(b.bitPattern, 0x7FF8_0000_0000_0042)
    }

    func testTypedAccessors() throws {
        var w = GGUFWriter()
        w.set("n", .uint32(7))
        w.set("big", .uint64(.max))
        w.set("x", .float32(0.5))
        w.set("s", .string("llama"))
        w.set("b", .bool(true))
        w.set("toks", .array(.string, [.string("a"), .string("b")]))
        w.set("ints", .array(.int32, [.int32(-1), .int32(2)]))
        w.set("floats", .array(.float32, [.float32(0.25)]))
        w.set("mixed", .array(.array, [.array(.string, [])]))
        let f = try parse(try w.serialized())

        XCTAssertEqual(try f.int("n"), 7)
        XCTAssertEqual(try f.requiredInt("n"), 7)
        XCTAssertEqual(try f.float("n"), 7)
        XCTAssertEqual(try f.float("x"), 0.5)
        XCTAssertEqual(try f.string("s"), "llama")
        XCTAssertEqual(try f.bool("b"), true)
        XCTAssertEqual(try f.stringArray("toks"), ["a", "b"])
        XCTAssertEqual(try f.intArray("ints"), [-1, 2])
        XCTAssertEqual(try f.floatArray("floats"), [0.25])
        XCTAssertNil(try f.int("absent"))
        XCTAssertNil(try f.stringArray("absent"))

        let p = f.path
        XCTAssertThrowsError(try f.requiredInt("absent")) {
            XCTAssertEqual($0 as? GGUFError, .missingKey(path: p, key: "absent"))
        }
        XCTAssertThrowsError(try f.requiredString("absent")) {
            XCTAssertEqual($0 as? GGUFError, .missingKey(path: p, key: "absent"))
        }
        XCTAssertThrowsError(try f.int("big"), "u64 beyond Int.max is not an Int") {
            XCTAssertEqual($0 as? GGUFError, .wrongKeyType(path: p, key: "big", expected: "an integer", found: "u64"))
        }
        XCTAssertThrowsError(try f.int("s")) {
            XCTAssertEqual($0 as? GGUFError, .wrongKeyType(path: p, key: "s", expected: "an integer", found: "string"))
        }
        XCTAssertThrowsError(try f.string("n")) {
            XCTAssertEqual($0 as? GGUFError, .wrongKeyType(path: p, key: "n", expected: "a string", found: "u32"))
        }
        XCTAssertThrowsError(try f.bool("n"))
        XCTAssertThrowsError(try f.stringArray("ints")) {
            XCTAssertEqual($0 as? GGUFError, .wrongKeyType(path: p, key: "ints", expected: "an array of strings", found: "an array of i32"))
        }
        XCTAssertThrowsError(try f.intArray("toks"))
        XCTAssertThrowsError(try f.floatArray("mixed"))
        XCTAssertThrowsError(try f.intArray("n"))
    }

    func testTensorsRoundTripWithData() throws {
        var w = sampleWriter()
        let q4: [UInt8] = (0..<(2 * 20)).map { UInt8($0) }  // two Q4_1 blocks
        w.addTensor("q4", type: .q4_1, dims: [32, 2], bytes: q4)
        w.addTensor("big4d", type: .f16, dims: [2, 3, 4, 5]) { buffer in
            for i in 0..<buffer.count { buffer[i] = UInt8(i % 251) }
        }
        let p = path()
        var reported: [(Int, Int)] = []
        try w.write(to: p) { reported.append(($0, $1)) }
        XCTAssertEqual(reported.count, 4)
        XCTAssertEqual(reported.last?.0, reported.last?.1)

        let f = try GGUFFile(path: p)
        XCTAssertEqual(f.tensors.map(\.name), ["a", "b", "q4", "big4d"])
        let a = try XCTUnwrap(f.tensorInfo("a"))
        XCTAssertEqual(a.dims, [4, 2])
        XCTAssertEqual(a.type, .f32)
        XCTAssertEqual(a.elementCount, 8)
        XCTAssertEqual(a.rowLength, 4)
        XCTAssertEqual(a.rowCount, 2)
        XCTAssertEqual(a.rowBytes, 16)
        let floats = (0..<8).map { f.data(of: a).load(fromByteOffset: $0 * 4, as: Float.self) }
        XCTAssertEqual(floats, (0..<8).map(Float.init))

        let b = try XCTUnwrap(f.tensorInfo("b"))
        XCTAssertEqual(b.byteCount, 34)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.data(of: b), count: 34)), [UInt8](repeating: 7, count: 34))

        let q = try XCTUnwrap(f.tensorInfo("q4"))
        XCTAssertEqual(q.byteCount, 40)
        XCTAssertEqual(q.rowBytes, 20)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.data(of: q), count: 40)), q4)

        let big = try XCTUnwrap(f.tensorInfo("big4d"))
        XCTAssertEqual(big.elementCount, 120)
        XCTAssertEqual(big.byteCount, 240)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.data(of: big), count: 240)), (0..<240).map { UInt8($0 % 251) })

        XCTAssertTrue(f.hasTensor("b"))
        XCTAssertFalse(f.hasTensor("c"))
        XCTAssertNil(f.tensorInfo("c"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: p)), Data(try w.serialized()),
                       "streamed and in-memory output agree")
    }

    // MARK: versions and flavours

    func testVersion2FromWriterAndByHand() throws {
        var w = sampleWriter()
        w.version = 2
        let f = try parse(try w.serialized())
        XCTAssertEqual(f.version, 2)
        XCTAssertEqual(try f.string("general.architecture"), "llama")
        XCTAssertEqual(f.tensors.count, 2)

        // Built byte by byte, independent of the writer: one key, one 2x2 F32 tensor.
        var raw = RawGGUF(version: 2, tensorCount: 1, keyCount: 1)
        raw.keyString("general.name", "v2")
        raw.tensor("t", dims: [2, 2])
        let dataStart = (raw.bytes.count + 31) / 32 * 32
        raw.data(count: 16)
        let g = try parse(raw.bytes)
        XCTAssertEqual(g.version, 2)
        XCTAssertEqual(g.flavor, .gguf)
        XCTAssertEqual(try g.string("general.name"), "v2")
        XCTAssertEqual(g.dataOffset, dataStart)
        XCTAssertEqual(g.tensors, [GGUFTensorInfo(name: "t", dims: [2, 2], type: .f32, offset: dataStart, byteCount: 16)])
        XCTAssertEqual(g.data(of: g.tensors[0]).load(fromByteOffset: 4, as: UInt8.self), 4)
    }

    func testUnsupportedVersions() throws {
        for version: UInt32 in [0, 1, 4, .max] {
            let raw = RawGGUF(version: version, tensorCount: 0, keyCount: 0)
            guard case .unsupportedVersion(_, let found)? = rejection(raw.bytes) else { XCTFail("v\(version)"); continue }
            XCTAssertEqual(found, version)
        }
        var w = GGUFWriter()
        w.version = 1
        XCTAssertEqual(writerRejection(w).map { if case .unsupportedVersion = $0 { return true } else { return false } }, true)
    }

    func testPowerInferFlavour() throws {
        var w = sampleWriter()
        w.magic = Array("PWRI".utf8)
        let f = try parse(try w.serialized())
        XCTAssertEqual(f.flavor, .powerInfer)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.tensors.map(\.name), ["a", "b"])

        var raw = RawGGUF(magic: "PWRI", version: 2, tensorCount: 0, keyCount: 1)
        raw.keyU32("x", 1)
        XCTAssertEqual(try parse(raw.bytes).flavor, .powerInfer)
    }

    // MARK: alignment and mapping

    func testCustomAlignmentIsHonouredAndDataIsMappedInPlace() throws {
        for alignment in [1, 8, 32, 64, 4096] {
            var w = GGUFWriter()
            w.set("general.alignment", .uint32(UInt32(alignment)))
            w.set("pad", .string("odd-length"))
            // Odd byte counts so that unpadded offsets would be misaligned.
            w.addTensor("x", type: .i8, dims: [3], bytes: [1, 2, 3])
            w.addTensor("y", type: .i8, dims: [5], bytes: [4, 5, 6, 7, 8])
            w.addTensor("z", type: .q8_0, dims: [32], bytes: [UInt8](repeating: 9, count: 34))
            XCTAssertEqual(w.alignment, alignment)
            let p = path()
            try w.write(to: p)
            let f = try GGUFFile(path: p)
            XCTAssertEqual(f.alignment, alignment)
            XCTAssertEqual(f.dataOffset % alignment, 0)
            let base = try XCTUnwrap(f.file.bytes.baseAddress)
            for t in f.tensors {
                XCTAssertEqual(t.offset % alignment, 0, "\(t.name) at alignment \(alignment)")
                // The pointer handed out lies inside the mapping: the data was not copied.
                let pointer = f.data(of: t)
                XCTAssertEqual(pointer, base + t.offset)
                XCTAssertGreaterThanOrEqual(pointer, base)
                XCTAssertLessThanOrEqual(pointer + t.byteCount, base + f.file.bytes.count)
            }
            let y = try XCTUnwrap(f.tensorInfo("y"))
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.data(of: y), count: 5)), [4, 5, 6, 7, 8])
        }
    }

    func testDefaultAlignmentIs32() throws {
        var w = GGUFWriter()
        w.addTensor("x", type: .i8, dims: [3], bytes: [1, 2, 3])
        w.addTensor("y", type: .i8, dims: [1], bytes: [4])
        let f = try parse(try w.serialized())
        XCTAssertEqual(f.alignment, 32)
        XCTAssertEqual(f.tensors.map { $0.offset - f.dataOffset }, [0, 32])
    }

    func testBadAlignmentValues() throws {
        for value: GGUFValue in [.uint32(0), .uint32(3), .uint32(48), .int32(-32), .bool(true), .string("32"), .float32(32)] {
            var raw = RawGGUF(tensorCount: 0, keyCount: 1)
            raw.string("general.alignment")
            raw.u32(value.type.rawValue)
            var encoded: [UInt8] = []
            encoded.appendValue(value)
            raw.bytes += encoded
            guard case .badAlignment? = rejection(raw.bytes) else { XCTFail("\(value) accepted"); continue }

            var w = GGUFWriter()
            w.set("general.alignment", value)
            guard case .badAlignment? = writerRejection(w) else { XCTFail("writer took \(value)"); continue }
        }
    }

    func testHugeAlignmentDoesNotOverflow() throws {
        // A power of two near Int.max is a valid alignment but puts the data section far past
        // the end of the file: the tensor is out of bounds, and nothing overflows on the way.
        var raw = RawGGUF(tensorCount: 1, keyCount: 1)
        raw.string("general.alignment")
        raw.u32(GGUFValueType.uint64.rawValue)
        raw.u64(1 << 62)
        raw.tensor("t", dims: [4])
        raw.data(count: 16)
        XCTAssertEqual(rejection(raw.bytes).map(tag), "tensorOutOfBounds")

        var none = RawGGUF(tensorCount: 0, keyCount: 1)
        none.string("general.alignment")
        none.u32(GGUFValueType.uint64.rawValue)
        none.u64(1 << 63)  // beyond Int.max
        XCTAssertEqual(rejection(none.bytes).map(tag), "badAlignment")
    }

    func testMisalignedTensorOffset() throws {
        var raw = RawGGUF(tensorCount: 2, keyCount: 0)
        raw.tensor("ok", dims: [8], offset: 0)
        raw.tensor("bad", dims: [8], offset: 36)
        raw.data(count: 96)
        XCTAssertEqual(rejection(raw.bytes).map(tag), "misalignedTensor")
        if case .misalignedTensor(_, let name, let offset)? = rejection(raw.bytes) {
            XCTAssertEqual(name, "bad")
            XCTAssertEqual(offset, 36)
        }

        // The same offset is fine once the file declares a 4-byte alignment.
        var ok = RawGGUF(tensorCount: 1, keyCount: 1)
        ok.keyU32("general.alignment", 4)
        ok.tensor("t", dims: [8], offset: 36)
        ok.data(alignment: 4, count: 68)
        let f = try parse(ok.bytes)
        XCTAssertEqual(f.tensors[0].offset, f.dataOffset + 36)
    }

    // MARK: malformed files

    /// The name of an error's case, for asserting the kind without spelling out every field.
    private func tag(_ error: GGUFError) -> String {
        Mirror(reflecting: error).children.first?.label ?? "\(error)"
    }

    func testBadMagic() throws {
        var raw = RawGGUF(magic: "GGML", tensorCount: 0, keyCount: 0)
        raw.u32(0)
        guard case .badMagic(_, let found)? = rejection(raw.bytes) else { return XCTFail() }
        XCTAssertEqual(found, Array("GGML".utf8))

        // Bytes that are not text at all still give a readable message.
        let error = rejection([0x00, 0xFF, 0x47, 0x7F] + [UInt8](repeating: 0, count: 20))
        XCTAssertEqual(error.map(tag), "badMagic")
        XCTAssertTrue(error!.description.contains("\\x0\\xffG\\x7f"), error!.description)
        // Case matters: "gguf" is not GGUF.
        XCTAssertEqual(rejection(Array("gguf".utf8) + [3, 0, 0, 0] + [UInt8](repeating: 0, count: 16)).map(tag), "badMagic")
    }

    func testEmptyAndTinyFiles() throws {
        guard case .truncated(_, let reading, let offset)? = rejection([]) else { return XCTFail() }
        XCTAssertEqual(reading, "magic")
        XCTAssertEqual(offset, 0)
        guard case .truncated(_, let r2, let o2)? = rejection(Array("GGUF".utf8) + [3, 0]) else { return XCTFail() }
        XCTAssertEqual(r2, "version")
        XCTAssertEqual(o2, 4)
    }

    func testNotAFileAndMissingFile() throws {
        XCTAssertThrowsError(try GGUFFile(path: directory.path)) {
            guard case .cannotOpen(_, let reason)? = $0 as? GGUFError else { return XCTFail("\($0)") }
            XCTAssertEqual(reason, "not a regular file (it is a directory)")
        }
        XCTAssertThrowsError(try GGUFFile(path: path("missing.gguf"))) {
            XCTAssertEqual(($0 as? GGUFError).map(tag), "cannotOpen")
        }
    }

    func testTruncatedHeaderCounts() throws {
        let raw = RawGGUF(tensorCount: 0, keyCount: 0)
        guard case .truncated(_, let reading, let offset)? = rejection(Array(raw.bytes.prefix(12))) else { return XCTFail() }
        XCTAssertEqual(reading, "tensor count")
        XCTAssertEqual(offset, 8)
        guard case .truncated(_, let r2, _)? = rejection(Array(raw.bytes.prefix(20))) else { return XCTFail() }
        XCTAssertEqual(r2, "metadata count")
    }

    func testTruncatedInMetadata() throws {
        // One key whose string value is cut short: the declared length runs past the end.
        var raw = RawGGUF(tensorCount: 0, keyCount: 1)
        raw.keyString("general.name", "a rather long model name")
        let cut = Array(raw.bytes.dropLast(5))
        guard case .truncated(_, let reading, let offset)? = rejection(cut) else { return XCTFail() }
        XCTAssertEqual(reading, "value of \"general.name\"")
        XCTAssertEqual(offset, 24 + 8 + 12 + 4, "points at the string's length field")

        // Cut inside a fixed-size value.
        var raw2 = RawGGUF(tensorCount: 0, keyCount: 1)
        raw2.string("n")
        raw2.u32(GGUFValueType.uint64.rawValue)
        raw2.u32(7)  // half a u64
        guard case .truncated(_, let r2, _)? = rejection(raw2.bytes) else { return XCTFail() }
        XCTAssertEqual(r2, "value of \"n\"")

        // Cut inside an array's elements.
        var raw3 = RawGGUF(tensorCount: 0, keyCount: 1)
        raw3.string("arr")
        raw3.u32(GGUFValueType.array.rawValue)
        raw3.u32(GGUFValueType.string.rawValue)
        raw3.u64(2)
        raw3.string("first")
        raw3.u64(100)  // second string claims 100 bytes
        raw3.bytes += Array("short".utf8)
        guard case .truncated(_, let r3, _)? = rejection(raw3.bytes) else { return XCTFail() }
        XCTAssertEqual(r3, "value of \"arr\"")
    }

    func testTruncatedTensorInfo() throws {
        // A long key before the tensor, so the tensor-count plausibility check (made on the
        // bytes left after the header) passes and the cut is what fails.
        var raw = RawGGUF(tensorCount: 1, keyCount: 1)
        raw.keyString("padding", String(repeating: "x", count: 64))
        raw.tensor("weight", dims: [4, 4])
        let full = raw.bytes
        for (drop, expected) in [(8, "offset of \"weight\""), (12, "type of \"weight\""), (16, "dimensions of \"weight\""),
                                 (24, "dimensions of \"weight\""), (30, "dimension count of \"weight\"")] {
            let cut = Array(full.dropLast(drop))
            guard case .truncated(_, let reading, _)? = rejection(cut) else { XCTFail("drop \(drop)"); continue }
            XCTAssertEqual(reading, expected, "drop \(drop)")
        }
    }

    func testEveryPrefixOfAValidFileIsRejectedCleanly() throws {
        let full = try sampleWriter().serialized()
        XCTAssertNoThrow(try parse(full))
        // Tensor "b" ends exactly at the last byte of data (its padding follows), so every
        // shorter prefix that keeps the header whole lacks tensor data.
        let lastDataByte = try parse(full).tensors.map { $0.offset + $0.byteCount }.max()!
        var kinds = Set<String>()
        for length in 0..<lastDataByte {
            guard let error = memoryRejection(Array(full.prefix(length))) else { continue }
            let kind = tag(error)
            XCTAssertTrue(["truncated", "absurdCount", "tensorOutOfBounds"].contains(kind), "\(length): \(error)")
            kinds.insert(kind)
        }
        XCTAssertEqual(kinds, ["truncated", "absurdCount", "tensorOutOfBounds"])
    }

    func testTensorDataPastTheEnd() throws {
        var raw = RawGGUF(tensorCount: 1, keyCount: 0)
        raw.tensor("w", dims: [16, 16])  // 1024 bytes of F32
        raw.data(count: 1000)
        guard case .tensorOutOfBounds(_, let name, let end, let size)? = rejection(raw.bytes) else { return XCTFail() }
        XCTAssertEqual(name, "w")
        XCTAssertEqual(Int(end), size + 24)

        // An offset so large that offset + size wraps around must not wrap into "valid".
        var wrap = RawGGUF(tensorCount: 1, keyCount: 0)
        wrap.tensor("w", dims: [8], offset: UInt64.max - 31)
        wrap.data(count: 64)
        guard case .tensorOutOfBounds(_, _, let end2, _)? = rejection(wrap.bytes) else { return XCTFail() }
        XCTAssertEqual(end2, .max)

        // Offsets that are merely large.
        var far = RawGGUF(tensorCount: 1, keyCount: 0)
        far.tensor("w", dims: [8], offset: 1 << 40)
        far.data(count: 64)
        XCTAssertEqual(rejection(far.bytes).map(tag), "tensorOutOfBounds")
    }

    func testAbsurdCounts() throws {
        let huge: UInt64 = 1 << 60
        var keys = RawGGUF(tensorCount: 0, keyCount: huge)
        keys.keyU32("a", 1)
        XCTAssertEqual(rejection(keys.bytes), .absurdCount(path: directory.appendingPathComponent("f\(fileCounter).gguf").path,
                                                           what: "metadata count", count: huge))

        var tensors = RawGGUF(tensorCount: huge, keyCount: 0)
        tensors.tensor("t", dims: [1])
        guard case .absurdCount(_, let what, let count)? = rejection(tensors.bytes) else { return XCTFail() }
        XCTAssertEqual(what, "tensor count")
        XCTAssertEqual(count, huge)

        // UInt64.max must not trap when converted or multiplied.
        var maxed = RawGGUF(tensorCount: .max, keyCount: .max)
        maxed.keyU32("a", 1)
        XCTAssertEqual(rejection(maxed.bytes).map(tag), "absurdCount")

        // A string claiming 2^60 bytes: the file ends long before, so it is reported as truncated
        // at the string's length field (never an allocation of 2^60 bytes).
        var string = RawGGUF(tensorCount: 0, keyCount: 1)
        string.u64(huge)
        string.bytes += Array("key".utf8) + [UInt8](repeating: 0, count: 16)
        guard case .truncated(_, let reading, let offset)? = rejection(string.bytes) else { return XCTFail() }
        XCTAssertEqual(reading, "metadata key")
        XCTAssertEqual(offset, 24)

        var stringMax = RawGGUF(tensorCount: 0, keyCount: 1)
        stringMax.keyString("k", "v")
        stringMax.bytes.replaceSubrange(24..<32, with: [UInt8](repeating: 0xFF, count: 8))
        XCTAssertEqual(rejection(stringMax.bytes).map(tag), "truncated")

        // Array lengths, for fixed-size, string and nested-array elements.
        for element in [GGUFValueType.uint8, .uint64, .string, .array] {
            var array = RawGGUF(tensorCount: 0, keyCount: 1)
            array.string("arr")
            array.u32(GGUFValueType.array.rawValue)
            array.u32(element.rawValue)
            array.u64(huge)
            array.bytes += [UInt8](repeating: 0, count: 64)
            guard case .absurdCount(_, let what, let count)? = rejection(array.bytes) else { XCTFail("\(element)"); continue }
            XCTAssertEqual(what, "array \"arr\" length")
            XCTAssertEqual(count, huge)
        }
    }

    /// Decision: zero-sized dimensions are rejected as well (llama.cpp tolerates them). No model
    /// has an empty weight, and accepting them would put a zero-length guard in every kernel.
    func testBadDimensions() throws {
        let cases: [(String, [UInt64], TensorType)] = [
            ("zero dimension", [4, 0], .f32),
            ("2^40", [1 << 40], .f32),
            ("u64 max", [.max], .f32),
            ("product overflows", [0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF, 0x7FFF_FFFF], .f32),
            ("row not whole blocks", [33, 2], .q4_0),
            ("K-quant row of 32", [32], .q4_K),
        ]
        for (label, dims, type) in cases {
            var raw = RawGGUF(tensorCount: 1, keyCount: 0)
            raw.tensor(label, dims: dims, type: type.rawValue)
            raw.data(count: 256)
            guard case .badDimensions(_, let name, let found)? = rejection(raw.bytes) else { XCTFail(label); continue }
            XCTAssertEqual(name, label)
            XCTAssertEqual(found, dims, label)
        }
        // Zero dimensions, or more than ggml's four.
        for count: UInt32 in [0, 5, .max] {
            var raw = RawGGUF(tensorCount: 1, keyCount: 0)
            raw.string("t")
            raw.u32(count)
            raw.bytes += [UInt8](repeating: 0, count: 80)
            guard case .badDimensions(_, _, let found)? = rejection(raw.bytes) else { XCTFail("\(count) dims"); continue }
            XCTAssertEqual(found, [UInt64(count)])
        }
    }

    func testUnknownTensorType() throws {
        for code: UInt32 in [4, 5, 31, 36, 99, .max] {  // 4 and 5 were retired ggml types
            var raw = RawGGUF(tensorCount: 1, keyCount: 0)
            raw.tensor("t", dims: [32], type: code)
            raw.data(count: 256)
            XCTAssertEqual(rejection(raw.bytes).map(tag), "unknownTensorType", "code \(code)")
            if case .unknownTensorType(_, let name, let found)? = rejection(raw.bytes) {
                XCTAssertEqual(name, "t")
                XCTAssertEqual(found, code)
            }
        }
    }

    func testUnknownValueTypes() throws {
        var raw = RawGGUF(tensorCount: 0, keyCount: 1)
        raw.string("k")
        raw.u32(13)
        raw.bytes += [UInt8](repeating: 0, count: 16)
        guard case .unknownValueType(_, let key, let code)? = rejection(raw.bytes) else { return XCTFail() }
        XCTAssertEqual(key, "k")
        XCTAssertEqual(code, 13)

        var array = RawGGUF(tensorCount: 0, keyCount: 1)
        array.string("arr")
        array.u32(GGUFValueType.array.rawValue)
        array.u32(77)
        array.u64(1)
        array.bytes += [UInt8](repeating: 0, count: 16)
        guard case .unknownValueType(_, _, let code2)? = rejection(array.bytes) else { return XCTFail() }
        XCTAssertEqual(code2, 77)
    }

    func testInvalidUTF8() throws {
        var raw = RawGGUF(tensorCount: 0, keyCount: 1)
        raw.u64(2)
        raw.bytes += [0xC3, 0x28]  // a broken two-byte sequence
        raw.u32(GGUFValueType.uint8.rawValue)
        raw.u8(1)
        XCTAssertEqual(rejection(raw.bytes).map(tag), "invalidUTF8")

        var name = RawGGUF(tensorCount: 1, keyCount: 0)
        name.u64(1)
        name.u8(0xFF)
        name.u32(1)
        name.u64(1)
        name.u32(0)
        name.u64(0)
        name.data(count: 4)
        guard case .invalidUTF8(_, let offset)? = rejection(name.bytes) else { return XCTFail() }
        XCTAssertEqual(offset, 24)
    }

    func testArraysNestedTooDeeply() throws {
        // Ten levels of one-element arrays: a hostile file could otherwise recurse without limit.
        var raw = RawGGUF(tensorCount: 0, keyCount: 1)
        raw.string("deep")
        raw.u32(GGUFValueType.array.rawValue)
        for _ in 0..<10 {
            raw.u32(GGUFValueType.array.rawValue)
            raw.u64(1)
        }
        raw.bytes += [UInt8](repeating: 0, count: 64)
        XCTAssertEqual(rejection(raw.bytes).map(tag), "arrayTooDeep")

        var value = GGUFValue.array(.uint8, [])
        for _ in 0..<10 { value = .array(.array, [value]) }
        var w = GGUFWriter()
        w.set("deep", value)
        XCTAssertEqual(writerRejection(w).map(tag), "arrayTooDeep")
    }

    /// Decision: a repeated metadata key is an error, not "last one wins": the two readers of a
    /// file (llama.cpp and Ember) might otherwise see different models in it.
    func testDuplicateMetadataKey() throws {
        var raw = RawGGUF(tensorCount: 0, keyCount: 2)
        raw.keyU32("llama.block_count", 2)
        raw.keyU32("llama.block_count", 30)
        guard case .duplicateKey(_, let key)? = rejection(raw.bytes) else { return XCTFail() }
        XCTAssertEqual(key, "llama.block_count")

        // The writer cannot produce one: setting a key again replaces it in place.
        var w = GGUFWriter()
        w.set("a", .uint32(1))
        w.set("b", .uint32(2))
        w.set("a", .string("again"))
        XCTAssertEqual(w.metadata.map(\.key), ["a", "b"])
        let f = try parse(try w.serialized())
        XCTAssertEqual(f.metadataKeys, ["a", "b"])
        XCTAssertEqual(f.value("a"), .string("again"))
    }

    func testDuplicateTensorName() throws {
        var raw = RawGGUF(tensorCount: 2, keyCount: 0)
        raw.tensor("w", dims: [8], offset: 0)
        raw.tensor("w", dims: [8], offset: 32)
        raw.data(count: 64)
        guard case .duplicateTensor(_, let name)? = rejection(raw.bytes) else { return XCTFail() }
        XCTAssertEqual(name, "w")

        var w = GGUFWriter()
        w.addTensor("w", dims: [1], floats: [1])
        w.addTensor("w", dims: [1], floats: [2])
        XCTAssertEqual(writerRejection(w).map(tag), "duplicateTensor")
    }

    /// Random corruption of a valid file must end in success or a GGUFError, never a trap.
    func testCorruptedBytesNeverCrash() throws {
        let seed = try sampleWriter().serialized()
        var rng = SplitMix64(seed: 0x5EED)  // the same sweep on every run
        var rejected = 0
        for _ in 0..<20000 {
            var bytes = seed
            for _ in 0..<Int(rng.next() % 4 + 1) {
                let i = Int(rng.next() % UInt64(bytes.count))
                // Mostly plausible small values and 0xFF runs, the bytes that hit edge cases.
                switch rng.next() % 3 {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes[i] = 0xFF
                default: bytes[i] ^= 1 << UInt8(rng.next() % 8)
                }
            }
            do {
                _ = try GGUFFile(file: try MappedFile(bytes: bytes, path: "corrupt.gguf"))
            } catch is GGUFError, is LimitError {
                rejected += 1
            }
        }
        XCTAssertGreaterThan(rejected, 1000)

        // Every offset of the header overwritten with each of the values that break size
        // arithmetic, as u32 and u64 (so counts, lengths, type codes and offsets all get them).
        let headerEnd = try parse(seed).dataOffset
        let nasty: [UInt64] = [0, 1, 3, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, 1 << 60,
                               UInt64(Int64.max), UInt64(Int64.max) + 1, .max]
        for offset in 0..<headerEnd {
            for v in nasty {
                for width in [4, 8] {
                    var bytes = seed
                    withUnsafeBytes(of: v.littleEndian) { le in
                        for i in 0..<width where offset + i < bytes.count { bytes[offset + i] = le[i] }
                    }
                    _ = try? GGUFFile(file: try MappedFile(bytes: bytes, path: "nasty.gguf"))
                }
            }
        }
    }

    // MARK: writer

    func testWriterValidatesBeforeWriting() throws {
        var empty = GGUFWriter()
        empty.addTensor("e", dims: [], floats: [])
        XCTAssertEqual(writerRejection(empty).map(tag), "badDimensions")

        var zero = GGUFWriter()
        zero.addTensor("z", dims: [4, 0], floats: [])
        XCTAssertEqual(writerRejection(zero).map(tag), "badDimensions")

        var five = GGUFWriter()
        five.addTensor("f", dims: [1, 1, 1, 1, 1], floats: [1])
        XCTAssertEqual(writerRejection(five).map(tag), "badDimensions")

        var blocks = GGUFWriter()
        blocks.addTensor("q", type: .q4_0, dims: [16], bytes: [UInt8](repeating: 0, count: 9))
        XCTAssertEqual(writerRejection(blocks).map(tag), "badDimensions")

        var overflow = GGUFWriter()
        overflow.addTensor("o", type: .f32, dims: [Int(Int32.max), Int(Int32.max), Int(Int32.max)]) { _ in XCTFail("filled") }
        XCTAssertEqual(writerRejection(overflow).map(tag), "badDimensions")

        // Wrong byte counts throw instead of trapping.
        var short = GGUFWriter()
        short.addTensor("s", dims: [4], floats: [1, 2, 3])
        XCTAssertEqual(writerRejection(short).map(tag), "writeFailed")
        var long = GGUFWriter()
        long.addTensor("l", type: .i8, dims: [2], bytes: [1, 2, 3])
        XCTAssertEqual(writerRejection(long).map(tag), "writeFailed")

        // An array whose items disagree with its declared element type would write garbage.
        var mixed = GGUFWriter()
        mixed.set("m", .array(.uint32, [.uint32(1), .string("two")]))
        XCTAssertEqual(writerRejection(mixed).map(tag), "wrongKeyType")

        for bad in ["GG", "GGML", "GGUFX"] {
            var magic = GGUFWriter()
            magic.magic = Array(bad.utf8)
            XCTAssertEqual(writerRejection(magic).map(tag), "badMagic", bad)
        }

        XCTAssertThrowsError(try short.serialized())
        XCTAssertEqual(try leftovers(), [])
    }

    func testWriteIsAtomic() throws {
        let target = path("model.gguf")
        var good = GGUFWriter()
        good.set("general.name", .string("first"))
        try good.write(to: target)
        let before = try Data(contentsOf: URL(fileURLWithPath: target))

        // A tensor whose bytes cannot be produced fails midway: the old file must survive intact.
        struct SourceGone: Error {}
        var failing = GGUFWriter()
        failing.set("general.name", .string("second"))
        failing.addTensor("ok", dims: [2], floats: [1, 2])
        failing.addTensor("bad", type: .f32, dims: [1024]) { _ in throw SourceGone() }
        XCTAssertThrowsError(try failing.write(to: target)) { XCTAssertTrue($0 is SourceGone) }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: target)), before)
        XCTAssertEqual(try leftovers(), [], "the temporary file is removed")

        // A successful write replaces the file whole.
        var second = GGUFWriter()
        second.set("general.name", .string("second"))
        try second.write(to: target)
        XCTAssertEqual(try GGUFFile(path: target).string("general.name"), "second")
        XCTAssertEqual(try leftovers(), [])

        // An unwritable destination is a typed error.
        XCTAssertThrowsError(try good.write(to: directory.appendingPathComponent("no/such/dir/x.gguf").path)) {
            guard case .noDirectory? = $0 as? OutputFileError else { return XCTFail("\($0)") }
        }
    }

    func testMappingOutlivesTheFileName() throws {
        // Tensor data is read from the mapping, so replacing the file on disk (as the atomic
        // writer does) does not change what an open GGUFFile sees.
        let target = path("live.gguf")
        var w = GGUFWriter()
        w.addTensor("t", type: .i8, dims: [4], bytes: [1, 2, 3, 4])
        try w.write(to: target)
        let f = try GGUFFile(path: target)
        var w2 = GGUFWriter()
        w2.addTensor("t", type: .i8, dims: [4], bytes: [9, 9, 9, 9])
        try w2.write(to: target)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.data(of: f.tensors[0]), count: 4)), [1, 2, 3, 4])
        let reopened = try GGUFFile(path: target)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: reopened.data(of: reopened.tensors[0]), count: 4)), [9, 9, 9, 9])
    }

    // MARK: real models

    /// The test models installed by scripts/setup, read as gguf-py (llama.cpp's own reader)
    /// reads them: these figures were taken from gguf-py's GGUFReader. Fetched when absent.
    func testRealModelsMatchGGUFPy() throws {
        struct Expected {
            let file: String, architecture: String, keys: Int, vocab: Int, tensors: Int, dataOffset: Int
            let first: GGUFTensorInfo, last: GGUFTensorInfo
        }
        let models = [
            Expected(file: "SmolLM2-135M-Instruct.Q4_1.gguf", architecture: "llama", keys: 33, vocab: 49152,
                     tensors: 272, dataOffset: 1_785_664,
                     first: GGUFTensorInfo(name: "token_embd.weight", dims: [576, 49152], type: .q8_0,
                                           offset: 1_785_664, byteCount: 576 * 49152 / 32 * 34),
                     last: GGUFTensorInfo(name: "output_norm.weight", dims: [576], type: .f32,
                                          offset: 98_360_128, byteCount: 576 * 4)),
            Expected(file: "gemma-3-270m-q4_k_m.gguf", architecture: "gemma3", keys: 33, vocab: 262_144,
                     tensors: 236, dataOffset: 6_525_120,
                     first: GGUFTensorInfo(name: "output_norm.weight", dims: [640], type: .f32,
                                           offset: 6_525_120, byteCount: 640 * 4),
                     last: GGUFTensorInfo(name: "blk.17.post_ffw_norm.weight", dims: [640], type: .f32,
                                          offset: 253_110_464, byteCount: 640 * 4)),
        ]
        for m in models {
            let known = try XCTUnwrap(KnownModel.all.first { $0.fileName == m.file })
            let f = try GGUFFile(path: try TestData.modelPath(known))
            XCTAssertEqual(f.flavor, .gguf)
            XCTAssertEqual(f.version, 3)
            XCTAssertEqual(try f.string("general.architecture"), m.architecture)
            XCTAssertEqual(f.metadataKeys.count, m.keys)
            XCTAssertEqual(try f.stringArray("tokenizer.ggml.tokens")?.count, m.vocab)
            XCTAssertEqual(f.tensors.count, m.tensors)
            XCTAssertEqual(f.dataOffset, m.dataOffset)
            XCTAssertEqual(f.tensors.first, m.first)
            XCTAssertEqual(f.tensors.last, m.last)
            for t in f.tensors {
                XCTAssertEqual(t.offset % f.alignment, 0, t.name)
                XCTAssertLessThanOrEqual(t.offset + t.byteCount, f.file.bytes.count, t.name)
            }
        }
    }

    func testTensorTypeTable() {
        for t in TensorType.allCases {
            XCTAssertEqual(TensorType(name: t.description.lowercased()), t)
            XCTAssertEqual(t.byteCount(elements: t.blockSize * 3), t.blockBytes * 3)
            if t.blockSize > 1 { XCTAssertNil(t.byteCount(elements: t.blockSize + 1)) }
        }
        XCTAssertNil(TensorType(name: "q4_2"))
        XCTAssertNil(TensorType.q4_K.byteCount(elements: -256))
        XCTAssertNil(TensorType.f64.byteCount(elements: Int.max))
    }
}
