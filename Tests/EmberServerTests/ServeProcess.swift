import EmberCore
import EmberDownload
import Foundation
import Synchronization
import XCTest

/// A real `ember serve` process (the release binary, as the CLI tests run it) on a free port.
/// Its stored properties are set once in `init`; clients on several threads only read them.
final class ServeProcess: @unchecked Sendable {
    let process = Process()
    let port: Int
    private let stderrLines: LineCollector

    static var binary: URL { TestPaths.packageRoot.appendingPathComponent(".build/release/ember") }

    static func smolLM2() throws -> String {
        try ModelStore.ensure(.smolLM2) { print("tests: \($0)") }
    }

    /// Starts `ember serve ARGUMENTS --port 0` and waits until it is ready.
    init(_ arguments: [String], readyWithin timeout: TimeInterval = 120) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary.path) else {
            XCTFail("\(Self.binary.path) is missing: run `swift build -c release` first")
            throw XCTSkip("no binary")
        }
        process.executableURL = Self.binary
        process.arguments = ["serve", "--port", "0"] + arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        stderrLines = LineCollector(err.fileHandleForReading)
        try process.run()
        guard let listening = stderrLines.wait(for: "listening on http://", timeout: timeout),
              let portText = listening.split(separator: ":").last?.split(separator: " ").first, let port = Int(portText) else {
            process.terminate()
            throw RawClient.ClientError("ember serve did not start listening: \(stderrLines.text)")
        }
        self.port = port
        guard stderrLines.wait(for: "ready", timeout: timeout) != nil else {
            process.terminate()
            throw RawClient.ClientError("ember serve did not become ready: \(stderrLines.text)")
        }
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    var stderr: String { stderrLines.text }

    /// A client that waits up to two minutes for an answer: generations queue behind each other,
    /// and other work may share the cores.
    func client() throws -> RawClient { try RawClient(port: port, timeout: 120) }

    func request(_ method: String, _ path: String, body: String? = nil) throws -> RawClient.Response {
        try client().request(method, path, body: body)
    }

    /// A metric's value from /metrics: the first sample of that name whose labels contain
    /// `labels` (say `finished_reason="abort"`).
    func metric(_ name: String, labels: String = "") throws -> Double? {
        let text = try request("GET", "/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") || line.hasPrefix(name + " ") {
            guard labels.isEmpty || line.contains(labels) else { continue }
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }

    /// Sends SIGTERM and waits for the exit; nil if it did not end within `timeout`.
    func terminate(within timeout: TimeInterval) -> Int32? {
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { return nil }
        return process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
    }
}

/// Lines of a pipe, collected by a thread of its own; tests wait for a line to appear.
final class LineCollector: Sendable {
    private let lines = Mutex<[String]>([])
    private let ended = Mutex(false)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            var pending = Data()
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending += data
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                    lines.withLock { $0.append(line) }
                    pending = Data(pending[(newline + 1)...])
                }
            }
            ended.withLock { $0 = true }
        }
    }

    var text: String { lines.withLock { $0.joined(separator: "\n") } }

    /// The first line containing `fragment`, waiting for it up to `timeout`.
    func wait(for fragment: String, timeout: TimeInterval) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = lines.withLock({ $0.first { $0.contains(fragment) } }) { return line }
            if ended.withLock({ $0 }) { return lines.withLock { $0.first { $0.contains(fragment) } } }
            usleep(10_000)
        }
        return nil
    }
}

/// Runs a program to its end and returns its status and output.
func runProgram(_ executable: String, _ arguments: [String], timeout: TimeInterval = 300) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let stdout = ResultBox<Data>(), stderr = ResultBox<Data>()
    let outHandle = out.fileHandleForReading, errHandle = err.fileHandleForReading
    Thread.detachNewThread { stdout.set(outHandle.readDataToEndOfFile()) }
    Thread.detachNewThread { stderr.set(errHandle.readDataToEndOfFile()) }
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(10_000) }
    if process.isRunning {
        process.terminate()
        XCTFail("\(executable) \(arguments.joined(separator: " ")) did not end within \(timeout) s")
    }
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout.wait(), as: UTF8.self), String(decoding: stderr.wait(), as: UTF8.self))
}
