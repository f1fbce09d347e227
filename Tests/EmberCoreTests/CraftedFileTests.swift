import Foundation
import XCTest
@testable import EmberCore
#if canImport(Glibc)
import Glibc
#endif

/// Builds GGUF bytes by hand, including the ones no writer would produce: the crafted-file
/// suite generates every malformed case here rather than keeping blobs.
struct CraftedGGUF {
    var bytes: [UInt8] = []

    init(magic: String = "GGUF", version: UInt32 = 3, tensorCount: UInt64, keyCount: UInt64) {
        bytes += Array(magic.utf8)
        u32(version)
        u64(tensorCount)
        u64(keyCount)
    }

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }

    mutating func key(_ key: String, _ value: GGUFValue) {
        string(key)
        u32(value.type.rawValue)
        bytes.appendValue(value)
    }

    /// An array key of `count` u8 zeros, written without building `count` GGUFValues.
    mutating func byteArray(_ key: String, count: Int) {
        string(key)
        u32(GGUFValueType.array.rawValue)
        u32(GGUFValueType.uint8.rawValue)
        u64(UInt64(count))
        bytes += [UInt8](repeating: 0, count: count)
    }

    mutating func tensor(_ name: String, dims: [UInt64], type: TensorType = .f32, offset: UInt64 = 0) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type.rawValue)
        u64(offset)
    }

    /// Pads to the data section and appends `count` bytes of data.
    mutating func data(alignment: Int = 32, count: Int, byte: UInt8 = 0) {
        while bytes.count % alignment != 0 { bytes.append(0) }
        bytes += [UInt8](repeating: byte, count: count)
    }

    /// A GGUF file from a writer's metadata and float tensors, where the writer's own checks
    /// are in the way (NaN weights are legal GGUF, so the writer writes them).
    static func file(_ metadata: [(String, GGUFValue)], floats: [(String, [Int], [Float])]) throws -> [UInt8] {
        var w = GGUFWriter()
        for (k, v) in metadata { w.set(k, v) }
        for (name, dims, values) in floats { w.addTensor(name, dims: dims, floats: values) }
        return try w.serialized()
    }
}

/// Every limit of the readers, each with a generated file that breaks it and the typed error it
/// must give; never a trap, a hang or an allocation sized by the file's claims.
final class CraftedFileTests: XCTestCase {
    /// Parses `bytes` from memory and returns the error, failing when they are accepted.
    func rejection(_ bytes: [UInt8], path: String = "crafted.gguf", file: StaticString = #filePath, line: UInt = #line) -> Error? {
        do {
            _ = try GGUFFile(file: try MappedFile(bytes: bytes, path: path))
            XCTFail("crafted file accepted", file: file, line: line)
        } catch {
            return error
        }
        return nil
    }

    func limitName(_ error: Error?) -> String? {
        guard case .outOfRange(_, _, _, _, let limit)? = error as? LimitError else { return nil }
        return limit.name
    }

    // MARK: GGUF structure

    func testCountsBeyondTheLimitsEvenWhenTheFileHoldsThem() throws {
        // 65,537 tensor descriptions of 33 bytes: room in the file, but more than the limit.
        var tensors = CraftedGGUF(tensorCount: UInt64(ReaderLimits.tensorCount.range.upperBound + 1), keyCount: 0)
        tensors.bytes += [UInt8](repeating: 0, count: 33 * (ReaderLimits.tensorCount.range.upperBound + 1))
        XCTAssertEqual(limitName(rejection(tensors.bytes)), "tensor count")

        var keys = CraftedGGUF(tensorCount: 0, keyCount: UInt64(ReaderLimits.metadataCount.range.upperBound + 1))
        keys.bytes += [UInt8](repeating: 0, count: 13 * (ReaderLimits.metadataCount.range.upperBound + 1))
        XCTAssertEqual(limitName(rejection(keys.bytes)), "metadata count")
    }

    func testArrayAndStringLengths() throws {
        var array = CraftedGGUF(tensorCount: 0, keyCount: 1)
        array.byteArray("big", count: ReaderLimits.arrayLength.range.upperBound + 1)
        let error = rejection(array.bytes)
        XCTAssertEqual(limitName(error), "array length")
        XCTAssertEqual("\(error!)", "crafted.gguf: length of the array \"big\" is 4194305, outside the limit on array length (0...4194304)")

        // Arrays each within the limit, together past what the reader will hold in memory.
        let each = ReaderLimits.arrayLength.range.upperBound
        let count = ReaderLimits.metadataValues.range.upperBound / each + 1
        var many = CraftedGGUF(tensorCount: 0, keyCount: UInt64(count))
        for k in 0..<count { many.byteArray("a\(k)", count: each) }
        XCTAssertEqual(limitName(rejection(many.bytes)), "metadata values")

        var string = CraftedGGUF(tensorCount: 0, keyCount: 1)
        string.key("long", .string(String(repeating: "x", count: ReaderLimits.stringLength.range.upperBound + 1)))
        let stringError = rejection(string.bytes)
        XCTAssertEqual(limitName(stringError), "string length")
        XCTAssertTrue("\(stringError!)".contains("value of \"long\" at byte 40 is 16777217 bytes long"), "\(stringError!)")
    }

    func testTensorNamesBoundedAndNonEmpty() throws {
        for name in ["", String(repeating: "n", count: ReaderLimits.tensorNameLength.range.upperBound + 1)] {
            var raw = CraftedGGUF(tensorCount: 1, keyCount: 0)
            raw.tensor(name, dims: [8])
            raw.data(count: 32)
            XCTAssertEqual(limitName(rejection(raw.bytes)), "tensor name length", "\(name.count) bytes")
        }
        var longest = CraftedGGUF(tensorCount: 1, keyCount: 0)
        longest.tensor(String(repeating: "n", count: ReaderLimits.tensorNameLength.range.upperBound), dims: [8])
        longest.data(count: 32)
        XCTAssertNoThrow(try GGUFFile(file: try MappedFile(bytes: longest.bytes, path: "ok.gguf")))
    }

    func testElementCountsBeyondTheLimit() throws {
        // 2^31-1 squared does not overflow an Int but is far past 2^40 elements.
        for (dims, type) in [([UInt64(Int32.max), UInt64(Int32.max)], TensorType.i8), ([1 << 21, 1 << 20], .i8)] {
            var raw = CraftedGGUF(tensorCount: 1, keyCount: 0)
            raw.tensor("t", dims: dims, type: type)
            raw.data(count: 64)
            guard case .badDimensions(_, "t", dims)? = rejection(raw.bytes) as? GGUFError else { return XCTFail("\(dims)") }
        }
    }

    func testOverlappingTensorData() throws {
        for flavor in ["GGUF", "PWRI"] {
            // The same bytes claimed twice, and one tensor starting inside another.
            for (second, label) in [(UInt64(0), "same offset"), (32, "inside")] {
                var raw = CraftedGGUF(magic: flavor, tensorCount: 2, keyCount: 0)
                raw.tensor("first", dims: [16])  // 64 bytes at 0
                raw.tensor("second", dims: [8], offset: second)
                raw.data(count: 128)
                let error = rejection(raw.bytes)
                XCTAssertEqual(error as? GGUFError, .overlappingTensors(path: "crafted.gguf", tensor: "second", other: "first"), "\(flavor) \(label)")
            }
            // Adjacent is fine, in either order of description.
            var adjacent = CraftedGGUF(magic: flavor, tensorCount: 2, keyCount: 0)
            adjacent.tensor("later", dims: [8], offset: 64)
            adjacent.tensor("earlier", dims: [16], offset: 0)
            adjacent.data(count: 96)
            let f = try GGUFFile(file: try MappedFile(bytes: adjacent.bytes, path: "ok.gguf"))
            XCTAssertEqual(f.tensors.map(\.name), ["later", "earlier"])
        }
    }

    func testPowerInferFilesGetTheSameChecks() throws {
        var raw = CraftedGGUF(magic: "PWRI", tensorCount: 1, keyCount: 0)
        raw.tensor("t", dims: [8], offset: 4)
        raw.data(count: 64)
        XCTAssertEqual((rejection(raw.bytes) as? GGUFError).map { "\($0)".contains("not a multiple") }, true)

        var outside = CraftedGGUF(magic: "PWRI", tensorCount: 1, keyCount: 0)
        outside.tensor("t", dims: [64])
        outside.data(count: 64)
        guard case .tensorOutOfBounds? = rejection(outside.bytes) as? GGUFError else { return XCTFail() }
    }

    /// Names and keys from the file reach messages escaped and shortened.
    func testMessagesEscapeAndShortenFileText() throws {
        let hostile = "\u{1B}[2J\u{1B}]0;owned\u{07}\r\0" + String(repeating: "A", count: 100_000)
        var raw = CraftedGGUF(tensorCount: 2, keyCount: 0)
        raw.tensor(String(hostile.prefix(200)), dims: [8])
        raw.tensor(String(hostile.prefix(200)), dims: [8], offset: 32)
        raw.data(count: 64)
        var key = CraftedGGUF(tensorCount: 0, keyCount: 2)
        key.key(hostile, .uint8(1))
        key.key(hostile, .uint8(2))
        for bytes in [raw.bytes, key.bytes] {
            let message = "\(rejection(bytes)!)"
            XCTAssertFalse(message.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, message)
            XCTAssertTrue(message.contains("\\e[2J\\e]0;owned\\u{7}\\r\\0AAA"), message)
            XCTAssertLessThan(message.count, 200, message)
        }
    }

    // MARK: only regular files

    /// Runs `body` on another thread and fails if it has not returned within 10 s. A reader
    /// stuck opening `fifo` is then released by opening the FIFO's other end, so a regression
    /// fails the test instead of hanging the suite.
    func finishes(unblocking fifo: String, _ what: String, _ body: @escaping @Sendable () -> Void,
                  file: StaticString = #filePath, line: UInt = #line) {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { body(); done.signal() }
        if done.wait(timeout: .now() + 10) == .timedOut {
            XCTFail("\(what) blocked on a FIFO", file: file, line: line)
            let writer = open(fifo, O_WRONLY | O_NONBLOCK)
            if writer >= 0 { close(writer) }
            _ = done.wait(timeout: .now() + 10)
        }
    }

    func testFIFOsAndDevicesAreRefusedWithoutBlocking() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-fifo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let fifo = directory.appendingPathComponent("model.gguf").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)

        let readers: [(String, @Sendable (String) throws -> Void)] = [
            ("GGUFFile", { _ = try GGUFFile(path: $0) }),
            ("LanguageModel", { _ = try LanguageModel(path: $0) }),
            ("Tokenizer", { _ = try Tokenizer(path: $0) }),
            ("ActivationStatistics", { _ = try ActivationStatistics(path: $0) }),
            ("PredictorSet", { _ = try PredictorSet(path: $0) }),
            ("Placement", { _ = try Placement(path: $0) }),
            ("Placement.fileSHA256", { _ = try Placement.fileSHA256($0) }),
        ]
        for (name, read) in readers {
            for (path, kind) in [(fifo, "a FIFO"), ("/dev/zero", "a character device"), (directory.path, "a directory")] {
                finishes(unblocking: fifo, "\(name) of \(kind)") {
                    do {
                        try read(path)
                        XCTFail("\(name) read \(kind)")
                    } catch {
                        XCTAssertEqual(error as? GGUFError, .cannotOpen(path: path, reason: "not a regular file (it is \(kind))"), name)
                    }
                }
            }
        }

        // A symbolic link to a regular file reads as the file.
        let real = directory.appendingPathComponent("real.gguf").path
        try GGUFWriter().write(to: real)
        let link = directory.appendingPathComponent("link.gguf").path
        XCTAssertEqual(symlink(real, link), 0)
        XCTAssertNoThrow(try GGUFFile(path: link))
    }

    // MARK: hyperparameters, as Models/ reads them

    func testHyperparameterAccessorAppliesTheLimit() throws {
        var w = GGUFWriter()
        w.set("llama.block_count", .uint32(32))
        w.set("llama.too_many", .uint32(5000))
        w.set("llama.negative", .int32(-1))
        w.set("llama.huge", .uint64(.max))
        w.set("llama.text", .string("\u{1B}[2J"))
        let f = try GGUFFile(file: try MappedFile(bytes: try w.serialized(), path: "m.gguf"))
        XCTAssertEqual(try f.int("llama.block_count", within: ReaderLimits.layers), 32)
        XCTAssertEqual(try f.requiredInt("llama.block_count", within: ReaderLimits.layers), 32)
        XCTAssertNil(try f.int("llama.absent", within: ReaderLimits.layers))
        XCTAssertThrowsError(try f.requiredInt("llama.absent", within: ReaderLimits.layers)) {
            XCTAssertEqual($0 as? GGUFError, .missingKey(path: "m.gguf", key: "llama.absent"))
        }
        for key in ["llama.too_many", "llama.negative", "llama.huge"] {
            XCTAssertThrowsError(try f.int(key, within: ReaderLimits.layers), key) { error in
                XCTAssertEqual(limitName(error), "layers", key)
                XCTAssertTrue("\(error)".hasPrefix("m.gguf: metadata key \"\(key)\" is "), "\(error)")
                XCTAssertTrue("\(error)".hasSuffix(", outside the limit on layers (1...1024)"), "\(error)")
            }
        }
        XCTAssertThrowsError(try f.int("llama.text", within: ReaderLimits.layers)) { error in
            guard case .wrongKeyType? = error as? GGUFError else { return XCTFail("\(error)") }
            XCTAssertFalse("\(error)".contains("\u{1B}"))
        }
    }

    func testDuplicateTensorNamesInEitherFlavour() throws {
        for flavor in ["GGUF", "PWRI"] {
            var raw = CraftedGGUF(magic: flavor, tensorCount: 2, keyCount: 0)
            raw.tensor("w", dims: [8])
            raw.tensor("w", dims: [8], offset: 32)
            raw.data(count: 64)
            XCTAssertEqual(rejection(raw.bytes) as? GGUFError, .duplicateTensor(path: "crafted.gguf", tensor: "w"), flavor)
        }
    }
}
