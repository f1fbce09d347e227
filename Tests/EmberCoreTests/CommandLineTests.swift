@testable import EmberCore
import Foundation
import XCTest

/// The `ember` executable end to end: real model, real flags, real exit statuses.
final class CommandLineTests: XCTestCase {
    struct Outcome {
        let status: Int32
        let reason: Process.TerminationReason
        let stdout: String
        let stderr: String
    }

    /// Runs the release binary (built by `swift build -c release`, which .ci/run does first).
    func ember(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:],
               executable: String = "ember") throws -> Outcome {
        let binary = TestData.packageRoot.appendingPathComponent(".build/release/" + executable)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            XCTFail("\(binary.path) is missing: run `swift build -c release` first")
            throw XCTSkip("no binary")
        }
        return try run(binary.path, arguments, stdin: stdin, environment: environment)
    }

    /// Runs `executable` with `arguments`, feeding it `stdin`, and waits for it.
    func run(_ executable: String, _ arguments: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        // Read both pipes concurrently so a full pipe never blocks the child.
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { errBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let errData = errBox.data
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, reason: process.terminationReason,
                       stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self))
    }

    func smol() throws -> String { try TestData.modelPath(.smolLM2) }

    /// A fresh directory, removed when the test ends.
    func scratchDirectory(_ name: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        return directory
    }


    func testBadFlagsAreUsageErrors() throws {
        let cases: [([String], String)] = [
            ([], "usage"),
            (["frobnicate"], "unknown command"),
            (["run", "--bogus"], "unknown flag --bogus"),
            (["run", "-p", "hi", "-n", "many"], "-n"),
            (["run", "-p", "hi", "-t", "0"], "--threads"),
            (["run", "-p", "hi", "--temp"], "needs a value"),
            (["run", "-p", "hi", "--top-p", "1.5"], "--top-p"),
            (["run", "-m", "/nonexistent/model.gguf", "-p", "hi"], "no model file"),
            (["run"], "-p"),
            (["perplexity", "-m", "/dev/null"], "-f FILE"),
            (["run", "-p", "hi", "-t", "256"], "--threads must be an integer in 1..."),
            (["devices", "--gpu", "maybe"], "--gpu must be on or off"),
            (["devices", "--device", "-1"], "--device must be a device number"),
            (["bench", "--kernels", "sse2"], "--kernels must be one of portable, avx2, avx512-vnni"),
        ]
        for (arguments, message) in cases {
            let outcome = try ember(arguments)
            XCTAssertEqual(outcome.reason, .exit, "\(arguments)")
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(arguments): stderr was \(outcome.stderr)")
        }
    }

    func testDevicesListsOpenCLDevicesOrSaysWhyNot() throws {
        let missing = try ember(["devices"], environment: [OpenCLLibrary.environmentVariable: "/nonexistent/libOpenCL.so.1"])
        XCTAssertEqual(missing.status, 0, missing.stderr)
        XCTAssertTrue(missing.stdout.contains("OpenCL unavailable: cannot load /nonexistent/libOpenCL.so.1"), missing.stdout)

        let listed = try ember(["devices"], environment: ["EMBER_OPENCL_DEVICE": ""])
        XCTAssertEqual(listed.status, 0, listed.stderr)
        if case .success = OpenCLSystem.discover() {
            XCTAssertTrue(listed.stdout.contains("* 0: "), listed.stdout)
            XCTAssertTrue(listed.stdout.contains("chosen: device 0"), listed.stdout)
            let off = try ember(["devices", "--gpu", "off"])
            XCTAssertEqual(off.status, 0, off.stderr)
            XCTAssertTrue(off.stdout.contains("none chosen: turned off"), off.stdout)
            let beyond = try ember(["devices", "--device", "99"])
            XCTAssertEqual(beyond.status, 1)
            XCTAssertTrue(beyond.stderr.contains("no OpenCL device 99"), beyond.stderr)
        } else {
            XCTAssertTrue(listed.stdout.contains("OpenCL unavailable"), listed.stdout)
        }
        let bad = try ember(["devices", "--gpu", "maybe"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.contains("--gpu must be on or off"), bad.stderr)
    }

    func testBrokenModelFilesGiveAnErrorNotACrash() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let real = try Data(contentsOf: URL(fileURLWithPath: try smol()), options: .alwaysMapped)
        let files: [(String, Data)] = [
            ("empty.gguf", Data()),
            ("text.gguf", Data("hello, I am not a model".utf8)),
            ("header-only.gguf", real.prefix(4096)),
            ("truncated.gguf", real.prefix(real.count / 2)),
        ]
        for (name, data) in files {
            let path = directory.appendingPathComponent(name).path
            try data.write(to: URL(fileURLWithPath: path))
            let outcome = try ember(["run", "-m", path, "-p", "hi", "-n", "1"])
            XCTAssertEqual(outcome.reason, .exit, name)
            XCTAssertEqual(outcome.status, 1, "\(name): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains("error"), "\(name): \(outcome.stderr)")
        }
    }

    /// `--cache-type`: an unknown type is a usage error; Q8_0 on heads of 16 (the tiny OPT
    /// model) is an error naming the rule and the other choices; f16 runs.
    func testCacheTypeFlag() throws {
        let smolPath = try smol()
        let unknown = try ember(["run", "-m", smolPath, "-p", "hi", "-n", "1", "--cache-type", "q4_0"])
        XCTAssertEqual(unknown.status, 2, unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("--cache-type must be f32, f16, q8_0, not \"q4_0\""), unknown.stderr)
        let opt = TestData.localFixtures.appendingPathComponent("opt-tiny/opt-tiny.f16.gguf").path
        let unsuitable = try ember(["run", "-m", opt, "-p", "hi", "-n", "1", "--cache-type", "q8_0"])
        XCTAssertEqual(unsuitable.reason, .exit)
        XCTAssertEqual(unsuitable.status, 1, unsuitable.stderr)
        XCTAssertTrue(unsuitable.stderr.contains("multiples of 32 (this model has 16 and 16); choose f16 or f32"), unsuitable.stderr)
        XCTAssertTrue(unsuitable.stdout.isEmpty, unsuitable.stdout)
        let half = try ember(["run", "-m", smolPath, "-p", "The capital of France is", "-n", "4", "--temp", "0", "--cache-type", "f16"])
        XCTAssertEqual(half.status, 0, half.stderr)
        XCTAssertFalse(half.stdout.isEmpty)
    }

    func testRunStreamsTheGreedyContinuation() throws {
        let path = try smol()
        let outcome = try ember(["run", "-m", path, "-p", "The capital of France is", "-n", "12", "--temp", "0", "-t", "2"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        // llama.cpp's greedy ids for this prompt (fixtures), decoded by our tokenizer.
        let reference = try XCTUnwrap(try ReferenceTests.greedyCases().first)
        let tokenizer = try Tokenizer(file: try GGUFFile(path: path))
        XCTAssertEqual(outcome.stdout, tokenizer.decode(Array(reference.greedyIDs.prefix(12))) + "\n")
        XCTAssertTrue(outcome.stderr.contains("tokens/s"), outcome.stderr)
    }

    /// The example app, built on the public API alone, streams a chat reply and cancels a
    /// generation half-way.
    func testExampleAppUsesThePublicAPI() throws {
        let outcome = try ember([try smol(), "Name three colours."], executable: "ember-example")
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertTrue(outcome.stdout.contains("tokens/s"), outcome.stdout)
        let cancelled = try XCTUnwrap(outcome.stdout.split(separator: "\n").last { $0.hasPrefix("cancelled after") })
        let count = try XCTUnwrap(Int(cancelled.split(separator: " ")[2]))
        XCTAssertLessThan(count, 1000, "the cancelled generation stopped early")
        let usage = try ember([], executable: "ember-example")
        XCTAssertEqual(usage.status, 2)
    }

    /// Runs `script` in bash with `$EMBER` set to the release binary and `$MODEL` to SmolLM2.
    func shell(_ script: String) throws -> Outcome {
        let binary = TestData.packageRoot.appendingPathComponent(".build/release/ember").path
        return try run("/bin/bash", ["-c", script], environment: ["EMBER": binary, "MODEL": try smol()])
    }

    /// Output that cannot be written ends the command with a clear message; a reader that went
    /// away ends it quietly, with SIGPIPE's status, even when SIGPIPE is ignored.
    func testOutputFailuresEndCleanly() throws {
        let full = try shell("\"$EMBER\" run -m \"$MODEL\" -p hi -n 4 --temp 0 > /dev/full")
        XCTAssertEqual(full.status, 1, full.stderr)
        XCTAssertTrue(full.stderr.contains("cannot write to standard output: No space left on device"), full.stderr)
        let closed = try shell("\"$EMBER\" run -m \"$MODEL\" -p hi -n 4 --temp 0 >&-")
        XCTAssertEqual(closed.status, 1, closed.stderr)
        XCTAssertTrue(closed.stderr.contains("cannot write to standard output"), closed.stderr)
        let pipe = try shell("trap '' PIPE; \"$EMBER\" run -m \"$MODEL\" -p 'Once upon a time' -n 200 --temp 0 | head -c 1 > /dev/null; "
                             + "echo \"status ${PIPESTATUS[0]}\"")
        XCTAssertEqual(pipe.stdout, "status 141\n", pipe.stderr)
        XCTAssertFalse(pipe.stderr.contains("error"), pipe.stderr)
    }

    /// `-o` never replaces what is not a regular file, and a bad output path fails before the work.
    func testOutputPathsAreCheckedFirstAndNeverClobbered() throws {
        let directory = try scratchDirectory("outputs")
        let fifo = directory.appendingPathComponent("fifo").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let link = directory.appendingPathComponent("link.gguf").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: directory.appendingPathComponent("target").path)
        let text = TestData.fixtures.appendingPathComponent("eval-gpl3.txt").path
        let cases: [([String], String)] = [
            (["synth", "-o", "/dev/null"], "is a character device, not a regular file"),
            (["synth", "-o", fifo], "not a regular file"),
            (["synth", "-o", link], "not a regular file"),
            (["synth", "-o", directory.path], "not a regular file"),
            (["profile", "-m", try smol(), "-f", text, "-o", "/nonexistent/stats.gguf"], "/nonexistent is not an existing directory"),
            (["profile", "-m", try smol(), "-f", text, "-o", directory.appendingPathComponent("s.gguf").path, "--plot", fifo],
             "not a regular file"),
        ]
        for (arguments, message) in cases {
            let start = Date()
            let outcome = try ember(arguments)
            XCTAssertEqual(outcome.status, 1, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(arguments): stderr was \(outcome.stderr)")
            XCTAssertLessThan(Date().timeIntervalSince(start), 5, "\(arguments): refused before the work")
        }
        var kind = stat()
        XCTAssertEqual(lstat(fifo, &kind), 0)
        XCTAssertEqual(kind.st_mode & S_IFMT, S_IFIFO, "the FIFO is still a FIFO")
        XCTAssertEqual(lstat(link, &kind), 0)
        XCTAssertEqual(kind.st_mode & S_IFMT, S_IFLNK, "the link is still a link")
    }

    /// A model file given where predictors go says so, and metadata echoed in a message cannot
    /// drive the terminal.
    func testMessagesNameTheProblemAndEscapeFileText() throws {
        let misplaced = try ember(["run", "-p", "hi", "-n", "1", "--sparsity", "predictor", "--predictor", try smol()])
        XCTAssertEqual(misplaced.status, 1, misplaced.stderr)
        XCTAssertTrue(misplaced.stderr.contains("not a predictor file"), misplaced.stderr)

        let directory = try scratchDirectory("escape")
        let path = directory.appendingPathComponent("hostile.gguf").path
        var writer = GGUFWriter()
        writer.set("general.architecture", .string("llama\u{1B}[2J\r\u{0}" + String(repeating: "x", count: 10_000)))
        try writer.write(to: path)
        let hostile = try ember(["run", "-m", path, "-p", "hi"])
        XCTAssertEqual(hostile.status, 1, hostile.stderr)
        XCTAssertTrue(hostile.stderr.contains("is not supported"), hostile.stderr)
        XCTAssertFalse(hostile.stderr.contains("\u{1B}") || hostile.stderr.contains("\r") || hostile.stderr.contains("\u{0}"),
                       hostile.stderr.debugDescription)
        XCTAssertLessThan(hostile.stderr.count, 1000, "long metadata is shortened")
    }

    func testPromptLongerThanTheContextIsAnError() throws {
        let outcome = try ember(["run", "-m", try smol(), "--ctx", "16", "-p", String(repeating: "word ", count: 40)])
        XCTAssertEqual(outcome.status, 1, outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("context"), outcome.stderr)
    }

    func testInvalidUTF8InputIsRefused() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("ember-bad-\(UUID().uuidString).txt")
        try Data([0x48, 0x69, 0xC3, 0x28, 0xFF]).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let outcome = try ember(["run", "-m", try smol(), "-f", file.path])
        XCTAssertEqual(outcome.status, 2, outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("UTF-8"), outcome.stderr)
    }

    func testChatAnswersEachLineUntilEndOfInput() throws {
        let outcome = try ember(["chat", "-m", try smol(), "--temp", "0", "-n", "24"], stdin: "What is 2+2?\nAnd 3+3?\n")
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let replies = outcome.stdout.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertGreaterThanOrEqual(replies.count, 2, outcome.stdout)
    }

    /// A line that is not UTF-8, or a conversation that outgrows the context, is reported and
    /// the chat goes on.
    func testChatContinuesAfterABadLineAndAFullContext() throws {
        let bad = try shell("printf 'Hi\\n\\xff\\xfe\\nWhat is 2+2?\\n' | \"$EMBER\" chat -m \"$MODEL\" --temp 0 -n 8")
        XCTAssertEqual(bad.status, 0, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("not valid UTF-8"), bad.stderr)
        XCTAssertGreaterThanOrEqual(bad.stdout.split(separator: "\n").count, 2, "both good lines answered: \(bad.stdout)")

        let long = String(repeating: "Tell me more about the sea and the sky. ", count: 6)
        let full = try ember(["chat", "-m", try smol(), "--temp", "0", "-n", "16", "--ctx", "96"],
                             stdin: long + "\n" + long + "\n" + "Hi\n")
        XCTAssertEqual(full.status, 0, full.stderr)
        XCTAssertTrue(full.stderr.contains("new conversation"), full.stderr)
    }

    func testPerplexityAndBenchReport() throws {
        let path = try smol()
        let perplexity = try ember(["perplexity", "-m", path, "-f", TestData.fixtures.appendingPathComponent("eval-gpl3.txt").path,
                                    "--ctx", "64", "--chunks", "2"])
        XCTAssertEqual(perplexity.status, 0, perplexity.stderr)
        XCTAssertTrue(perplexity.stdout.contains("over 126 scored tokens, 2 chunks of 64"), perplexity.stdout)

        let bench = try ember(["bench", "-m", path, "-p", "8", "-n", "4", "-r", "1", "-t", "2", "--json"])
        XCTAssertEqual(bench.status, 0, bench.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["kernels"] as? String, KernelFamily.best.name)
        XCTAssertGreaterThan(try XCTUnwrap(json["decode_tps_median"] as? Double), 0)
        XCTAssertGreaterThan(try XCTUnwrap(json["read_bandwidth_bytes_per_s"] as? Double), 1e8)
        XCTAssertEqual(json["weight_bytes_per_token"] as? Int, (try TestData.model(.smolLM2)).bytesPerToken)
        // Every weight byte was read, so mapped in; beside them a short context's cache and
        // scratch: well under 1 GB.
        let peak = try XCTUnwrap(json["peak_resident_bytes"] as? Int)
        XCTAssertGreaterThan(peak, (try TestData.model(.smolLM2)).bytesPerToken)
        XCTAssertLessThan(peak, 1 << 30)

        let portable = try ember(["bench", "-m", path, "-p", "4", "-n", "2", "-r", "1", "-t", "2", "--kernels", "portable"])
        XCTAssertEqual(portable.status, 0, portable.stderr)
        XCTAssertTrue(portable.stdout.contains("kernels: portable"), portable.stdout)
    }

    /// `ember place` end to end on SmolLM2 with statistics of seeded random counts: usage
    /// mistakes exit 2, a run reports its figures and writes a file that reads back.
    func testPlacementCommand() throws {
        let directory = try scratchDirectory("place")
        let path = try smol()
        let config = try TestData.model(.smolLM2).config
        var random = SplitMix64(seed: 5)
        let layers = (0..<config.layerCount).map { _ in
            ActivationStatistics.Layer(gateThresholds: [0, 0], downThresholds: [0, 0],
                                       counts: (0..<2).map { _ in (0..<config.feedForwardLength).map { _ in Float(Int.random(in: 0...50, using: &random)) } })
        }
        let stats = directory.appendingPathComponent("stats.gguf").path
        try ActivationStatistics(sourceModel: "test", corpusSHA256: "", tokens: 50, activation: "silu", gated: true,
                                 feedForwardLength: config.feedForwardLength, sparsityTargets: [0.5, 0.7], layers: layers).write(to: stats)

        let mistakes: [([String], String)] = [
            (["place", "-m", path, "--stats", stats], "--vram-budget"),
            (["place", "-m", path, "--stats", stats, "--vram-budget", "6XB"], "--vram-budget must be a size"),
            (["place", "-m", path, "--stats", stats, "--vram-budget", "-1GiB"], "--vram-budget must be a size"),
            (["place", "-m", path, "--stats", stats, "--vram-budget", "1GiB", "--granularity", "0"], "--granularity"),
            (["place", "-m", path, "--stats", stats, "--vram-budget", "1GiB"], "choose one"),
            (["place", "-m", path, "--stats", stats, "--vram-budget", "1GiB", "--sparsity", "0.9"], "no sparsity target 0.9"),
            (["place", "-m", path, "--stats", directory.appendingPathComponent("none.gguf").path, "--vram-budget", "1GiB"], "no statistics file"),
        ]
        for (arguments, message) in mistakes {
            let outcome = try ember(arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(arguments): stderr was \(outcome.stderr)")
        }

        let output = directory.appendingPathComponent("placement.gguf").path
        let run = try ember(["place", "-m", path, "--stats", stats, "--vram-budget", "30MiB", "--sparsity", "0.7", "-o", output, "--json"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        let share = try XCTUnwrap(json["expected_device_share"] as? Double)
        XCTAssertGreaterThan(share, 0)
        XCTAssertLessThan(share, 1)
        XCTAssertLessThanOrEqual(try XCTUnwrap(json["used_bytes"] as? Int), 30 << 20)
        let offloading = try XCTUnwrap(json["layer_offloading"] as? [String: Any])
        XCTAssertNotNil(offloading["device_share"] as? Double)
        let placement = try Placement(path: output)
        XCTAssertEqual(placement.budget, 30 << 20)
        XCTAssertEqual(placement.expectedDeviceShare, share, accuracy: 1e-12)
        XCTAssertEqual(placement.deviceNeurons.map(\.count), try XCTUnwrap(json["device_neurons_per_layer"] as? [Int]))

        let text = try ember(["place", "-m", path, "--stats", stats, "--vram-budget", "30MiB", "--sparsity", "0.7"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("expected device share of activated-neuron work"), text.stdout)
        XCTAssertTrue(text.stdout.contains("offloading whole layers instead"), text.stdout)
    }

    /// `--vram-budget` end to end on SmolLM2 with seeded random statistics and predictors: the
    /// device takes its hottest neurons and `bench` reports its share; mistakes exit 2; `--gpu
    /// off` runs on the CPU alone; a budget beyond the device's memory is a clear error.
    func testHybridRunAndBench() throws {
        try TestData.requireOpenCL("hybrid runs of the command line")
        let directory = try scratchDirectory("hybrid")
        let path = try smol()
        let config = try TestData.model(.smolLM2).config
        let d = config.embeddingLength, f = config.feedForwardLength, r = 8
        var random = SplitMix64(seed: 9)
        let layers = (0..<config.layerCount).map { _ in
            ActivationStatistics.Layer(gateThresholds: [0], downThresholds: [0],
                                       counts: [(0..<f).map { _ in Float(Int.random(in: 0...50, using: &random)) }])
        }
        let stats = directory.appendingPathComponent("stats.gguf").path
        try ActivationStatistics(sourceModel: "test", corpusSHA256: "", tokens: 50, activation: "silu", gated: true,
                                 feedForwardLength: f, sparsityTargets: [0.5], layers: layers).write(to: stats)
        func weights(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -0.1...0.1, using: &random) } }
        let predictor = directory.appendingPathComponent("predictor.gguf").path
        try PredictorSet(fc1: (0..<config.layerCount).map { _ in weights(r * d) }, fc2: (0..<config.layerCount).map { _ in weights(f * r) },
                         ranks: Array(repeating: r, count: config.layerCount),
                         thresholds: Array(repeating: 0, count: config.layerCount), inputLength: d, neuronCount: f).write(to: predictor)
        let sparse = ["-m", path, "--sparsity", "predictor", "--stats", stats, "--predictor", predictor]

        let mistakes: [([String], String)] = [
            (["run", "-p", "hi", "-m", path, "--vram-budget", "1GiB"], "needs --sparsity predictor"),
            (["run", "-p", "hi", "--vram-budget", "12XB"] + sparse, "--vram-budget must be a size"),
            (["run", "-p", "hi", "--vram-budget", "16MiB", "--gpu", "maybe"] + sparse, "--gpu"),
        ]
        for (arguments, message) in mistakes {
            let outcome = try ember(arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(arguments): stderr was \(outcome.stderr)")
        }

        // 64 MiB with a 64-position context: the output head (28 MB, read whole every token),
        // every layer's attention (about 20 MB with its KV cache), then some FFN neurons. (At 32
        // MiB the head alone saves more reads than all 30 attention blocks, and wins.)
        let hybridFlags = ["--vram-budget", "64MiB", "--ctx", "64"]
        let run = try ember(["run", "-p", "The capital of France is", "-n", "6", "--temp", "0"] + hybridFlags + sparse)
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("holds the attention of 30 of 30 layers and the output head"), run.stderr)
        XCTAssertFalse(run.stdout.isEmpty)

        let bench = try ember(["bench", "-p", "8", "-n", "8", "-r", "1", "-t", "2", "--json", "--vram-budget", "64MiB"] + sparse)
        XCTAssertEqual(bench.status, 0, bench.stderr)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any])
        let share = try XCTUnwrap(json["device_share"] as? Double)
        XCTAssertGreaterThan(share, 0.05)
        XCTAssertLessThan(share, 0.6)
        XCTAssertEqual(json["device_attention_layers"] as? Int, 30)
        XCTAssertNil(json["device_failure"])

        // A placement written by `ember place` for the same settings is the one the run uses.
        let placementPath = directory.appendingPathComponent("placement.gguf").path
        let place = try ember(["place", "-m", path, "--stats", stats, "--vram-budget", "64MiB", "--kv-tokens", "64",
                               "-o", placementPath])
        XCTAssertEqual(place.status, 0, place.stderr)
        let placed = try ember(["run", "-p", "hi", "-n", "2", "--placement", placementPath] + hybridFlags + sparse)
        XCTAssertEqual(placed.status, 0, placed.stderr)
        XCTAssertTrue(placed.stderr.contains("placement from \(placementPath)"), placed.stderr)
        let other = try ember(["run", "-p", "hi", "-n", "2", "--vram-budget", "24MiB", "--ctx", "64", "--placement", placementPath] + sparse)
        XCTAssertTrue(other.stderr.contains("was made for another budget"), other.stderr)

        let off = try ember(["run", "-p", "hi", "-n", "2", "--vram-budget", "16MiB", "--gpu", "off"] + sparse)
        XCTAssertEqual(off.status, 0, off.stderr)
        XCTAssertTrue(off.stderr.contains("the device is turned off"), off.stderr)

        let huge = try ember(["run", "-p", "hi", "-n", "2", "--vram-budget", "64TiB"] + sparse)
        XCTAssertEqual(huge.status, 1, huge.stderr)
        XCTAssertTrue(huge.stderr.contains("memory"), huge.stderr)
    }

    /// A model whose FFN type the device kernels lack (Q5_1) runs hybrid flags on the CPU, saying so.
    func testHybridFallsBackToTheCPUForTypesTheDeviceLacks() throws {
        try TestData.requireOpenCL("hybrid runs of the command line")
        let directory = try scratchDirectory("q51")
        let model = directory.appendingPathComponent("tiny.gguf").path
        let stats = directory.appendingPathComponent("tiny.stats.gguf").path
        let predictor = directory.appendingPathComponent("tiny.predictor.gguf").path
        let text = TestData.fixtures.appendingPathComponent("eval-gpl3.txt").path
        for step in [["synth", "--shape", "tiny", "--type", "q5_1", "-o", model],
                     ["profile", "-m", model, "-f", text, "--tokens", "512", "-o", stats],
                     ["train-predictor", "-m", model, "--stats", stats, "-f", text, "--tokens", "1024", "--epochs", "2", "-o", predictor]] {
            let outcome = try ember(step)
            XCTAssertEqual(outcome.status, 0, "\(step): \(outcome.stderr)")
        }
        let run = try ember(["run", "-m", model, "-p", "hi", "-n", "3", "--vram-budget", "1MiB"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("do not handle Q5_1; the CPU computes every neuron"), run.stderr)
        XCTAssertTrue(run.stderr.contains("sparsity: predictor"), run.stderr)
    }
}
