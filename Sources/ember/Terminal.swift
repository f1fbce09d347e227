import Foundation

/// Output helpers: the answer on stdout, everything else on stderr, progress only on a
/// terminal so logs and pipes stay clean.
enum Terminal {
    static let standardErrorIsTerminal = isatty(STDERR_FILENO) == 1

    static func error(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    static func note(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Writes without a newline and flushes at once (streamed tokens).
    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}

/// A one-line progress display on stderr, redrawn in place; silent when stderr is not a terminal.
final class Progress {
    private let label: String
    private let enabled: Bool
    private var lastDraw = DispatchTime(uptimeNanoseconds: 0)

    init(_ label: String, enabled: Bool = Terminal.standardErrorIsTerminal) {
        self.label = label
        self.enabled = enabled
    }

    func update(_ done: Int, of total: Int, detail: String = "") {
        guard enabled else { return }
        let now = DispatchTime.now()
        // Redraw at most ten times a second, but always draw the end.
        guard done == total || now.uptimeNanoseconds - lastDraw.uptimeNanoseconds > 100_000_000 else { return }
        lastDraw = now
        let width = 30
        let filled = total > 0 ? width * done / total : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        FileHandle.standardError.write(Data("\r\u{1B}[K\(label) [\(bar)] \(done)/\(total) \(detail)".utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
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
