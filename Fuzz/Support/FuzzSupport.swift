import Foundation
@testable import EmberCore

/// What every fuzz target shares: turning libFuzzer's bytes into a GGUFFile, touching every
/// message an error can produce, and writing the seed corpus when asked.
enum Fuzz {
    static func bytes(_ data: UnsafePointer<UInt8>, _ size: Int) -> [UInt8] {
        Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// The input parsed as a GGUF file held in memory (ending at a guard page, so reading past
    /// the end crashes); nil when the reader rejects it.
    static func file(_ data: UnsafePointer<UInt8>, _ size: Int) -> GGUFFile? {
        do {
            return try GGUFFile(file: try MappedFile(bytes: bytes(data, size), path: "fuzz.gguf"))
        } catch {
            render(error)
            return nil
        }
    }

    /// A property every input must keep; unlike `precondition`, its message survives -O.
    static func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String = "") {
        if !condition() { fatalError("fuzz check failed: " + message()) }
    }

    /// Builds the message of an error the way the CLI would show it: descriptions run code too
    /// (escaping, formatting), and must be short and free of control characters.
    static func render(_ error: Error) {
        let message = (error as? LocalizedError)?.errorDescription ?? "\(error)"
        // A long campaign may set EMBER_FUZZ_KNOWN_MESSAGES=ModelError,... to get past a message
        // finding already reported, so it can look for others; CI never sets it.
        if knownMessageFindings.contains(String(describing: type(of: error))) { return }
        Fuzz.check(!message.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) },
                     "unescaped control character in: \(SafeText.escaped(message, limit: 400))")
        Fuzz.check(message.utf8.count < 4096, "message of \(message.utf8.count) bytes: \(SafeText.escaped(message, limit: 400))")
    }

    static let knownMessageFindings = Set((ProcessInfo.processInfo.environment["EMBER_FUZZ_KNOWN_MESSAGES"] ?? "")
        .split(separator: ",").map(String.init))

    /// When EMBER_FUZZ_SEEDS names a directory, writes `seeds` there and exits: `Fuzz/run`
    /// makes each target's seed corpus this way, from the same code the target is built from.
    static func writeSeedsIfAsked(_ seeds: () throws -> [(String, [UInt8])]) {
        guard let directory = ProcessInfo.processInfo.environment["EMBER_FUZZ_SEEDS"] else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (name, bytes) in try seeds() {
                try Data(bytes).write(to: URL(fileURLWithPath: directory).appendingPathComponent(name))
            }
        } catch {
            fatalError("cannot write the seeds: \(error)")
        }
        exit(0)
    }
}
