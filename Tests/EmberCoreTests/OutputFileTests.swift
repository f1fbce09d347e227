import Foundation
import XCTest
@testable import EmberCore
#if canImport(Glibc)
import Glibc
#endif

/// Output files: written whole or not at all, never replacing anything but a regular file, and
/// a bad destination found before the work starts.
final class OutputFileTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-output-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    func leftovers(in directory: String? = nil) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory ?? self.directory.path).filter { $0.contains(".tmp-") }
    }

    func kind(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & S_IFMT : 0
    }

    /// A small GGUF file to write.
    var sample: GGUFWriter {
        var w = GGUFWriter()
        w.set("general.name", .string("sample"))
        w.addTensor("t", dims: [64], floats: (0..<64).map(Float.init))
        return w
    }

    /// Mounts a tmpfs of `size` (e.g. "64k") with `options` on a new directory; nil when this
    /// process may not mount (not root). The mount is removed when the test ends.
    func tinyFileSystem(size: String, options: String = "") throws -> String? {
        guard getuid() == 0 else { return nil }
        let mountPoint = path("mnt-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let status = mount("tmpfs", mountPoint, "tmpfs", 0, "size=\(size)" + (options.isEmpty ? "" : "," + options))
        guard status == 0 else { return nil }
        addTeardownBlock { umount2(mountPoint, Int32(MNT_DETACH)) }
        return mountPoint
    }

    // MARK: what may be replaced

    func testNonRegularTargetsAreRefusedAndLeftAlone() throws {
        let fifo = path("fifo.gguf")
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let subdirectory = path("dir.gguf")
        try FileManager.default.createDirectory(atPath: subdirectory, withIntermediateDirectories: false)
        let real = path("real.gguf")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: real))
        let link = path("link.gguf")
        XCTAssertEqual(symlink(real, link), 0)
        var targets: [(String, mode_t, String)] = [(fifo, S_IFIFO, "a FIFO"), (subdirectory, S_IFDIR, "a directory"),
                                                    (link, S_IFLNK, "a symbolic link")]
        // A device node like /dev/null (character device 1:3, makedev(1, 3) = 0x103), where this
        // process may make one.
        let device = path("null.gguf")
        if mknod(device, S_IFCHR | 0o666, dev_t(0x103)) == 0 { targets.append((device, S_IFCHR, "a character device")) }

        for (target, type, label) in targets {
            let expected = OutputFileError.notARegularFile(path: target, kind: label)
            XCTAssertThrowsError(try AtomicFileWriter.prepare(target)) { XCTAssertEqual($0 as? OutputFileError, expected) }
            XCTAssertThrowsError(try sample.write(to: target)) { XCTAssertEqual($0 as? OutputFileError, expected) }
            XCTAssertThrowsError(try AtomicFileWriter.write([1, 2, 3], to: target)) { XCTAssertEqual($0 as? OutputFileError, expected) }
            XCTAssertEqual(kind(target), type, "\(label) must stay \(label)")
            XCTAssertTrue("\(expected)".contains("refusing to replace it"))
        }
        XCTAssertEqual(try String(contentsOfFile: real, encoding: .utf8), "precious", "the link's target is untouched")
        XCTAssertEqual(try leftovers(), [])
    }

    /// A target that turns into something else while the file is being written is still not replaced.
    func testTargetReplacedDuringTheWriteIsNotClobbered() throws {
        let target = path("late.gguf")
        XCTAssertThrowsError(try AtomicFileWriter.write(to: target) { file in
            try file.write([1, 2, 3])
            XCTAssertEqual(mkfifo(target, 0o600), 0)
        }) { XCTAssertEqual($0 as? OutputFileError, .notARegularFile(path: target, kind: "a FIFO")) }
        XCTAssertEqual(kind(target), S_IFIFO)
        XCTAssertEqual(try leftovers(), [])
    }

    func testRegularFilesAreReplacedKeepingTheirPermissions() throws {
        let target = path("model.gguf")
        try Data("old".utf8).write(to: URL(fileURLWithPath: target))
        XCTAssertEqual(chmod(target, 0o640), 0)
        try sample.write(to: target)
        XCTAssertEqual(try GGUFFile(path: target).string("general.name"), "sample")
        var info = stat()
        XCTAssertEqual(stat(target, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o640)
        XCTAssertEqual(try leftovers(), [])
    }

    // MARK: the directory, before the work

    func testMissingOrUnwritableDirectoryIsFoundUpFront() throws {
        let missing = path("no/such/dir/out.gguf")
        XCTAssertThrowsError(try AtomicFileWriter.prepare(missing)) {
            XCTAssertEqual($0 as? OutputFileError, .noDirectory(path: missing, directory: self.path("no/such/dir")))
        }
        // A file where the directory should be.
        let file = path("plain")
        try Data().write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try AtomicFileWriter.prepare(file + "/out.gguf")) {
            XCTAssertEqual($0 as? OutputFileError, .noDirectory(path: file + "/out.gguf", directory: file))
        }
        // A relative name lands in the current directory, which exists.
        XCTAssertNoThrow(try AtomicFileWriter.prepare("relative-name-that-is-not-created.gguf"))

        // A directory this process cannot write: read-only by mode (root ignores modes, so as
        // root a read-only tmpfs stands in).
        let readOnly: String
        if let mounted = try tinyFileSystem(size: "64k", options: "ro") {
            readOnly = mounted
        } else {
            readOnly = path("readonly")
            try FileManager.default.createDirectory(atPath: readOnly, withIntermediateDirectories: false)
            XCTAssertEqual(chmod(readOnly, 0o555), 0)
            addTeardownBlock { chmod(readOnly, 0o755) }
        }
        XCTAssertThrowsError(try AtomicFileWriter.prepare(readOnly + "/out.gguf")) { error in
            guard case .directoryNotWritable(_, let dir, _)? = error as? OutputFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(dir, readOnly)
        }
        XCTAssertThrowsError(try sample.write(to: readOnly + "/out.gguf"))
    }

    // MARK: failures while writing

    /// The file-size limit makes write(2) fail with EFBIG, as a full disk fails with ENOSPC,
    /// without privileges: the error says so, the old file survives, no temporary remains.
    func testWriteFailureKeepsTheOldFile() throws {
        let target = path("big.gguf")
        try sample.write(to: target)
        let before = try Data(contentsOf: URL(fileURLWithPath: target))

        var big = GGUFWriter()
        big.addTensor("big", type: .f32, dims: [1 << 20]) { _ in }  // 4 MiB
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        let oldSignal = signal(SIGXFSZ, SIG_IGN)
        var small = rlimit(rlim_cur: 1 << 20, rlim_max: old.rlim_max)
        setrlimit(Int32(RLIMIT_FSIZE.rawValue), &small)
        defer {
            setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
            signal(SIGXFSZ, oldSignal)
        }
        XCTAssertThrowsError(try big.write(to: target)) { error in
            XCTAssertEqual(error as? OutputFileError,
                           .writeFailed(path: target, reason: "File too large (the file was not written; \(target) is unchanged)"))
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: target)), before)
        XCTAssertEqual(try leftovers(), [])
    }

    /// A real full file system (a 64 KiB tmpfs; mounting needs root).
    func testFullDiskKeepsTheOldFile() throws {
        guard let mounted = try tinyFileSystem(size: "64k") else {
            throw XCTSkip("mounting a tmpfs needs root; testWriteFailureKeepsTheOldFile covers the same path with EFBIG")
        }
        let target = mounted + "/model.gguf"
        try sample.write(to: target)
        let before = try Data(contentsOf: URL(fileURLWithPath: target))
        var big = GGUFWriter()
        big.addTensor("big", type: .f32, dims: [1 << 16]) { _ in }  // 256 KiB
        XCTAssertThrowsError(try big.write(to: target)) { error in
            guard case .writeFailed(_, let reason)? = error as? OutputFileError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.hasPrefix("No space left on device"), reason)
            XCTAssertTrue("\(error)".contains("is unchanged"), "\(error)")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: target)), before)
        XCTAssertEqual(try leftovers(in: mounted), [])
    }

    func testThrowingBodyRemovesTheTemporaryFile() throws {
        struct Stop: Error {}
        let target = path("never.bin")
        XCTAssertThrowsError(try AtomicFileWriter.write(to: target) { file in
            try file.write([UInt8](repeating: 7, count: 1000))
            throw Stop()
        }) { XCTAssertTrue($0 is Stop) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: target))
        XCTAssertEqual(try leftovers(), [])

        // Dropped without commit: removed too.
        do {
            let writer = try AtomicFileWriter(path: target)
            try writer.write([1])
            XCTAssertTrue(FileManager.default.fileExists(atPath: writer.temporaryPath))
        }
        XCTAssertEqual(try leftovers(), [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: target))
    }

    /// Every file writer of the library goes through the same checks.
    func testLibraryWritersRefuseAFIFO() throws {
        let fifo = path("out.fifo")
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let statistics = ActivationStatistics(sourceModel: "m", corpusSHA256: "", tokens: 1, activation: "relu", gated: true,
                                              feedForwardLength: 2, sparsityTargets: [0.5],
                                              layers: [.init(gateThresholds: [0], downThresholds: [0], counts: [[1, 0]])])
        let predictors = PredictorSet(fc1: [[1, 0]], fc2: [[1, 1]], ranks: [1], thresholds: [0], inputLength: 2, neuronCount: 2)
        let placement = Placement(budget: 1, granularity: 1, minimumGroups: 0, modelName: "m", statisticsSHA256: "",
                                  sparsityTarget: 0.5, feedForwardLength: 2, denseBlocks: [], deviceNeurons: [[0]],
                                  denseBytes: 0, neuronBytes: 1, expectedDeviceShare: 1)
        let writers: [(String, () throws -> Void)] = [
            ("statistics", { try statistics.write(to: fifo) }),
            ("predictors", { try predictors.write(to: fifo) }),
            ("placement", { try placement.write(to: fifo) }),
        ]
        for (name, write) in writers {
            XCTAssertThrowsError(try write(), name) { XCTAssertEqual($0 as? OutputFileError, .notARegularFile(path: fifo, kind: "a FIFO")) }
            XCTAssertEqual(kind(fifo), S_IFIFO, name)
        }
    }
}
