import Foundation
import XCTest
@testable import EmberCore

/// The `ember` binary under a 2 GiB address-space limit (`ulimit -v`) on crafted models whose
/// hyperparameters would make it allocate far more: each must end with exit status 1 and a
/// message naming the key and the limit, quickly, never with a crash or an out-of-memory trap.
///
/// The hyperparameter ranges are applied where the model's config is read (Models/, with
/// `ReaderLimits`).
final class MemoryBoundTests: XCTestCase {
    static let addressSpaceKiB = 2 * 1024 * 1024

    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-bounds-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    /// A one-layer llama model (d = 32, F = 64, 2 heads of 16, 16 tokens), F32 weights, with
    /// `overrides` replacing or adding metadata.
    func tinyModel(_ overrides: [(String, GGUFValue)]) throws -> String {
        let d = 32, f = 64, vocabulary = 16
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        for (key, value) in [("block_count", 1), ("embedding_length", d), ("feed_forward_length", f), ("attention.head_count", 2),
                             ("attention.head_count_kv", 2), ("context_length", 64), ("vocab_size", vocabulary)] {
            w.set("llama.\(key)", .uint32(UInt32(value)))
        }
        let tokens = ["<unk>", "<s>", "</s>", "▁"] + (4..<vocabulary).map { "t\($0)" }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) }))
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        w.set("tokenizer.ggml.eos_token_id", .uint32(2))
        for (key, value) in overrides { w.set(key, value) }
        func matrix(_ name: String, _ rows: Int, _ columns: Int) {
            w.addTensor(name, dims: [columns, rows], floats: (0..<rows * columns).map { Float($0 % 7) / 70 })
        }
        func vector(_ name: String) { w.addTensor(name, dims: [d], floats: [Float](repeating: 1, count: d)) }
        matrix("token_embd.weight", vocabulary, d)
        vector("output_norm.weight")
        vector("blk.0.attn_norm.weight")
        for name in ["attn_q", "attn_k", "attn_v", "attn_output"] { matrix("blk.0.\(name).weight", d, d) }
        vector("blk.0.ffn_norm.weight")
        matrix("blk.0.ffn_gate.weight", f, d)
        matrix("blk.0.ffn_up.weight", f, d)
        matrix("blk.0.ffn_down.weight", d, f)
        let path = directory.appendingPathComponent("model-\(UUID().uuidString.prefix(8)).gguf").path
        try w.write(to: path)
        return path
    }

    struct Outcome {
        let status: Int32
        let reason: Process.TerminationReason
        let stderr: String
        let seconds: Double
    }

    /// `ember ARGUMENTS` under the address-space limit, killed after 60 s.
    func emberUnderLimit(_ arguments: [String]) throws -> Outcome {
        let binary = TestData.packageRoot.appendingPathComponent(".build/release/ember")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            XCTFail("\(binary.path) is missing: run `swift build -c release` first")
            throw XCTSkip("no binary")
        }
        let quoted = ([binary.path] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "ulimit -v \(Self.addressSpaceKiB) && exec \(quoted)"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        let killer = DispatchWorkItem { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: killer)
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        killer.cancel()
        return Outcome(status: process.terminationStatus, reason: process.terminationReason, stderr: text,
                       seconds: Date().timeIntervalSince(start))
    }

    /// The control: a sound crafted model runs to completion under the same limit.
    func testSoundModelRunsUnderTheLimit() throws {
        let outcome = try emberUnderLimit(["run", "-m", try tinyModel([]), "-p", "hi", "-n", "2", "-t", "1"])
        XCTAssertEqual(outcome.reason, .exit, outcome.stderr)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
    }

    /// The worst metadata the GGUF reader accepts (8 Mi values) still fits under the limit.
    func testLargestAcceptedMetadataFitsUnderTheLimit() throws {
        var raw = CraftedGGUF(tensorCount: 0, keyCount: 3)
        raw.key("general.architecture", .string("llama"))
        let half = ReaderLimits.metadataValues.range.upperBound / 2 - 2
        raw.byteArray("big.a", count: half)
        raw.byteArray("big.b", count: half)
        let path = directory.appendingPathComponent("metadata.gguf").path
        try Data(raw.bytes).write(to: URL(fileURLWithPath: path))
        let outcome = try emberUnderLimit(["run", "-m", path, "-p", "hi", "-n", "1"])
        XCTAssertEqual(outcome.reason, .exit, outcome.stderr)
        XCTAssertEqual(outcome.status, 1, outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("llama.block_count"), outcome.stderr)
    }

    /// Each of these is refused naming its key and limit (the ranges Models/ applies).
    func testAbsurdHyperparametersAreRefusedUnderTheLimit() throws {
        let cases: [(String, [(String, GGUFValue)], [String])] = [
            // Sized the rope's frequency table: 8.6 GB (found by Fuzz/run model).
            ("head dimension", [("llama.attention.key_length", .uint32(4_294_508_560))], ["outside the limit on head dimension"]),
            // head_count × key_length overflowed Int: a trap.
            ("overflow", [("llama.attention.head_count", .uint32(1 << 23)), ("llama.attention.key_length", .uint64(1 << 41))],
             ["outside the limit on attention heads", "outside the limit on head dimension"]),
            ("layers", [("llama.block_count", .uint32((1 << 24) - 1))], ["outside the limit on layers"]),
            ("embedding", [("llama.embedding_length", .uint32((1 << 24) - 1))], ["outside the limit on embedding length"]),
            ("feed-forward", [("llama.feed_forward_length", .uint64(1 << 40))], ["outside the limit on feed-forward length"]),
            // More KV heads than heads: refused against the head count, or the limit.
            ("kv heads", [("llama.attention.head_count_kv", .uint32(1 << 20))],
             ["outside the limit on key-value heads", "\"llama.attention.head_count_kv\" is 1048576, expected 1...2"]),
            ("vocabulary", [("llama.vocab_size", .uint64(1 << 40))], ["outside the limit on vocabulary size"]),
            ("context", [("llama.context_length", .uint64(1 << 40))], ["outside the limit on context length"]),
            ("experts", [("llama.expert_count", .uint32(8))], ["outside the limit on experts"]),
        ]
        for (label, overrides, limits) in cases {
            let outcome = try emberUnderLimit(["run", "-m", try tinyModel(overrides), "-p", "hi", "-n", "1", "-t", "1"])
            XCTAssertEqual(outcome.reason, .exit, "\(label): killed by a signal: \(outcome.stderr.suffix(300))")
            XCTAssertEqual(outcome.status, 1, "\(label): \(outcome.stderr.suffix(300))")
            XCTAssertTrue(limits.contains { outcome.stderr.contains($0) }, "\(label): \(outcome.stderr.suffix(300))")
            XCTAssertLessThan(outcome.seconds, 10, "\(label): took \(outcome.seconds) s")
        }
    }

    /// Needs SafeText in ModelError's messages (Models/): an architecture name from the file reaches the
    /// terminal escaped and shortened (found by Fuzz/run model).
    func testArchitectureNameIsEscapedInTheMessage() throws {
        let hostile = "\u{1B}]0;owned\u{07}\u{1B}[2J\r" + String(repeating: "A", count: 100_000)
        let outcome = try emberUnderLimit(["run", "-m", try tinyModel([("general.architecture", .string(hostile))]), "-p", "hi"])
        XCTAssertEqual(outcome.status, 1, outcome.stderr.suffix(300).description)
        XCTAssertFalse(outcome.stderr.contains("\u{1B}"), "the escape sequence reached the terminal")
        XCTAssertLessThan(outcome.stderr.utf8.count, 1000, "a 100 kB name reached the terminal")
    }
}
