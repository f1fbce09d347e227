import Foundation
import Synchronization

/// Output helpers: the answer on stdout, everything else on stderr, progress only on a
/// terminal so logs and pipes stay clean. A failed write to stdout (a full disk, a closed
/// descriptor) is an error that ends the command; a reader that went away (a broken pipe) ends
/// it quietly, as other Unix tools do.
enum Terminal {
    static let standardErrorIsTerminal = isatty(STDERR_FILENO) == 1

    /// Why writing the answer failed.
    struct WriteError: Error, CustomStringConvertible {
        let brokenPipe: Bool
        let description: String
    }

    /// Writes to stdout without a newline, at once (streamed tokens).
    static func write(_ text: String) throws {
        try writeAll(STDOUT_FILENO, Array(text.utf8), name: "standard output")
    }

    /// A line on stdout.
    static func print(_ text: String) throws { try write(text + "\n") }

    /// A line on stderr. If even stderr cannot be written there is nobody left to tell.
    static func note(_ text: String) {
        try? writeAll(STDERR_FILENO, Array((text + "\n").utf8), name: "standard error")
    }

    static func error(_ text: String) { note(text) }

    /// Text on stderr as it is (progress redraws).
    static func writeError(_ text: String) throws {
        try writeAll(STDERR_FILENO, Array(text.utf8), name: "standard error")
    }

    private static func writeAll(_ descriptor: Int32, _ bytes: [UInt8], name: String) throws {
        var done = 0
        while done < bytes.count {
            let written = bytes[done...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                let code = errno
                throw WriteError(brokenPipe: code == EPIPE, description: "cannot write to \(name): " + String(cString: strerror(code)))
            }
            done += written
        }
    }
}

/// A one-line progress display on stderr, redrawn in place; silent when stderr is not a terminal.
/// The library reports progress from its own tasks, so the last redraw time sits behind a lock.
final class Progress: Sendable {
    private let label: String
    private let enabled: Bool
    private let lastDraw = Mutex<UInt64>(0)

    init(_ label: String, enabled: Bool = Terminal.standardErrorIsTerminal) {
        self.label = label
        self.enabled = enabled
    }

    func update(_ done: Int, of total: Int, detail: String = "") {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        // Redraw at most ten times a second, but always draw the end.
        let due = lastDraw.withLock { last in
            guard done == total || now - last > 100_000_000 else { return false }
            last = now
            return true
        }
        guard due else { return }
        let width = 30
        let filled = total > 0 ? width * min(done, total) / total : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        try? Terminal.writeError("\r\u{1B}[K\(label) [\(bar)] \(done)/\(total) \(detail)")
    }

    func finish() {
        guard enabled else { return }
        try? Terminal.writeError("\r\u{1B}[K")
    }
}

/// Reads text files, refusing invalid UTF-8 instead of silently repairing it.
enum TextInput {
    static func readFile(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UsageError("cannot read \(path)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw UsageError("\(path) is not valid UTF-8")
        }
        return text
    }

    /// One line from stdin without its newline; nil at end of input.
    static func readLine() throws -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while read(STDIN_FILENO, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { return try decode(bytes) }
            bytes.append(byte)
        }
        return bytes.isEmpty ? nil : try decode(bytes)
    }

    private static func decode(_ bytes: [UInt8]) throws -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw UsageError("the input line is not valid UTF-8")
        }
        return text
    }
}
