@testable import EmberCore
import Foundation
import XCTest

/// `ember synth` models: they load and run, their planted sparsity is what was asked for, and
/// the same seed gives the same file.
final class SyntheticModelTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-synth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    /// Writes a tiny model and returns its path.
    func write(sparsity: Double = 0.9, type: TensorType = .q4_0, seed: UInt64 = 1, threads: Int = 2,
               inputRank: Int = 16, name: String = "model.gguf") throws -> String {
        let tokenizer = try GGUFFile(path: try TestData.modelPath(.smolLM2))
        let path = directory.appendingPathComponent(name).path
        let options = SyntheticModel.Options(shape: .tiny, sparsity: sparsity, type: type, seed: seed, inputRank: inputRank)
        try SyntheticModel.write(options, tokenizer: tokenizer, to: path, pool: ThreadPool(threads: threads))
        return path
    }

    /// Per layer, how often each neuron's relu(gate) was non-zero over `tokens` random tokens.
    func measuredFrequencies(_ path: String, tokens: Int) throws -> [[Double]] {
        let model = try LanguageModel(path: path)
        let config = model.config
        XCTAssertEqual(config.activation, .relu)
        let session = Context(model: model, threads: 2, contextLength: tokens)
        var counts = [[Int]](repeating: [Int](repeating: 0, count: config.feedForwardLength), count: config.layerCount)
        session.pass.feedForwardObserver = { observation in
            for t in 0..<observation.tokenCount {
                let row = observation.activated.row(t)
                for i in 0..<config.feedForwardLength where row[i] != 0 { counts[observation.layer][i] += 1 }
            }
        }
        _ = try session.evaluate(Self.randomTokens(tokens, vocabulary: config.vocabularySize))
        return counts.map { $0.map { Double($0) / Double(tokens) } }
    }

    /// A fixed sequence of random tokens: the embedding is what makes tokens differ.
    static func randomTokens(_ count: Int, vocabulary: Int) -> [Int32] {
        var state: UInt64 = 12345
        return (0..<count).map { _ -> Int32 in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32((state >> 33) % UInt64(vocabulary))
        }
    }

    /// The planted input structure is what lets predictors work: on the same tokens, at the same
    /// recall, a predictor of a structured model marks far fewer neurons than one of a model
    /// whose neurons fire independently of the token (which can do no better than the rates).
    func testPredictorsLearnThePlantedInputStructure() throws {
        var predicted: [Int: Float] = [:]
        for rank in [16, 0] {
            let model = try LanguageModel(path: try write(inputRank: rank, name: "rank\(rank).gguf"))
            let session = Context(model: model, threads: 2, contextLength: 256)
            let tokens = Self.randomTokens(4096, vocabulary: model.config.vocabularySize)
            let layer = 2
            let data = try PredictorTrainingData.collect(session: session, tokens: tokens, context: 256, layers: [layer],
                                                         thresholds: [Float](repeating: 0, count: 4), relu: true)
            var options = PredictorTrainingOptions()
            options.minRank = 32
            options.maxRank = 32
            options.epochs = 12
            let result = PredictorTrainer.train(data: data, layerCount: 4, hotShares: [Float](repeating: 0.3, count: 4),
                                                options: options, pool: session.pool, targetSparsity: 0.9)
            let report = try XCTUnwrap(result.reports.first)
            print(String(format: "synth tiny input rank %d: recall %.3f precision %.3f predicted %.3f (active %.3f)",
                         rank, report.recall, report.precision, report.predictedShare, report.activeShare))
            XCTAssertEqual(report.activeShare, 0.1, accuracy: 0.03)
            // τ is set on validation tokens for recall 0.95; held-out tokens keep most of it.
            XCTAssertGreaterThan(report.recall, 0.88)
            predicted[rank] = report.predictedShare
        }
        let structured = try XCTUnwrap(predicted[16]), unstructured = try XCTUnwrap(predicted[0])
        XCTAssertLessThan(structured, 0.5 * unstructured)
    }

    /// `exact` computes only the neurons ReLU lets through, so it must pick dense mode's tokens.
    /// Decoded token by token, the two differ only in rounding: the down projection is read
    /// neuron-major in Q8_0 instead of Q4_0 with 8-bit activations.
    func testExactSparsityGivesTheDenseTokens() throws {
        let model = try LanguageModel(path: try write(sparsity: 0.9))
        let prompt: [Int32] = [504, 3575, 282, 4649, 314]
        let dense = Context(model: model, threads: 2, contextLength: 64, batchSize: 1)
        let exact = Context(model: model, threads: 2, contextLength: 64, batchSize: 1)
        let execution = try SparseExecution(mode: .exact, model: model, statistics: nil, predictor: nil, pool: exact.pool)
        exact.sparse = execution
        var next = prompt
        var worst: Float = 0
        for step in 0..<40 {
            let a = Array(try dense.evaluate(next)), b = Array(try exact.evaluate(next))
            let difference = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            worst = max(worst, difference)
            let sorted = a.sorted(by: >)
            let denseChoice = argmax(a)
            // A different choice is only allowed where the dense top two are closer than the
            // logits moved.
            if sorted[0] - sorted[1] > 2 * difference {
                XCTAssertEqual(argmax(b), denseChoice, "step \(step)")
            }
            next = [denseChoice]
        }
        // Measured 0.019: a bound five times that.
        XCTAssertLessThan(worst, 0.1)
        XCTAssertEqual(execution.reachedSparsity, 0.9, accuracy: 0.03)
    }

    func testLoadsAndGeneratesWithLlamaMetadata() throws {
        let path = try write()
        let file = try GGUFFile(path: path)
        XCTAssertEqual(try file.string("general.architecture"), "llama")
        XCTAssertEqual(try file.string("ember.ffn_activation"), "relu")
        XCTAssertTrue(try XCTUnwrap(file.string("general.description")).contains("noise"))
        XCTAssertEqual(try file.stringArray("tokenizer.ggml.tokens")?.count, 49152)
        XCTAssertNotNil(try file.string("tokenizer.chat_template"))
        XCTAssertEqual(try file.int("llama.feed_forward_length"), 1024)
        XCTAssertEqual(try file.int("llama.attention.head_count_kv"), 2)
        XCTAssertEqual(file.tensorInfo("blk.3.ffn_down.weight")?.dims, [1024, 256])

        let model = try LanguageModel(file: file)
        let session = Context(model: model, threads: 2, contextLength: 64)
        var token: Int32 = 1
        var generated: [Int32] = []
        for _ in 0..<8 {
            let logits = try session.evaluate([token])
            XCTAssertTrue(logits.allSatisfy(\.isFinite))
            token = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
            generated.append(token)
        }
        XCTAssertEqual(generated.count, 8)
    }

    func testOtherTypesLoadAndRun() throws {
        for type in [TensorType.q8_0, .f16] {
            let path = try write(type: type, name: "\(type).gguf")
            let session = Context(model: try LanguageModel(path: path), threads: 2, contextLength: 16)
            XCTAssertTrue(try session.evaluate([1, 2, 3]).allSatisfy(\.isFinite), "\(type)")
        }
    }

    func testPlantedSparsityAndPowerLaw() throws {
        for sparsity in [0.9, 0.7] {
            let path = try write(sparsity: sparsity)
            let frequencies = try measuredFrequencies(path, tokens: 512)
            let all = frequencies.flatMap { $0 }
            let measured = 1 - all.reduce(0, +) / Double(all.count)
            print("synth tiny: requested sparsity \(sparsity), measured \(measured); per layer",
                  frequencies.map { 1 - $0.reduce(0, +) / Double($0.count) })
            XCTAssertEqual(measured, sparsity, accuracy: 0.03)

            let planted = SyntheticModel.firingProbabilities(neurons: 1024, sparsity: sparsity)
            for (layer, layerFrequencies) in frequencies.enumerated() {
                let sorted = layerFrequencies.sorted(by: >)
                let total = sorted.reduce(0, +)
                let hottestShare = sorted.prefix(sorted.count / 5).reduce(0, +) / total
                XCTAssertGreaterThan(hottestShare, 0.5, "layer \(layer), sparsity \(sparsity)")
                // Sorted frequencies follow the planted curve, decile by decile.
                let decile = sorted.count / 10
                var deviations: [Double] = []
                for d in 0..<10 {
                    let range = d * decile..<(d + 1) * decile
                    let got = sorted[range].reduce(0, +) / Double(decile)
                    let want = planted[range].reduce(0, +) / Double(decile)
                    deviations.append(got - want)
                    XCTAssertEqual(got, want, accuracy: 0.02, "layer \(layer), decile \(d), sparsity \(sparsity)")
                }
                if layer == 0 || layer == frequencies.count - 1 {
                    print("synth tiny s=\(sparsity) layer \(layer): hottest 20 % carry \(hottestShare); decile deviations",
                          deviations.map { ($0 * 1000).rounded() / 1000 })
                }
            }
        }
    }

    func testSameSeedSameBytes() throws {
        let a = try write(seed: 7, threads: 1, name: "a.gguf")
        let b = try write(seed: 7, threads: 2, name: "b.gguf")
        let c = try write(seed: 8, threads: 2, name: "c.gguf")
        let bytesA = try Data(contentsOf: URL(fileURLWithPath: a))
        XCTAssertEqual(bytesA, try Data(contentsOf: URL(fileURLWithPath: b)))
        XCTAssertNotEqual(bytesA, try Data(contentsOf: URL(fileURLWithPath: c)))
    }

    func testBadOptionsAreErrors() throws {
        XCTAssertNil(SyntheticModel.Shape.named("70b"))
        XCTAssertEqual(SyntheticModel.Shape.named("7B")?.feedForwardLength, 11008)
        XCTAssertThrowsError(try SyntheticModel.validate(.init(shape: .tiny, type: .q4_K)))
        for sparsity in [0, 1, -0.5, .nan, 0.999] {
            XCTAssertThrowsError(try SyntheticModel.validate(.init(shape: .tiny, sparsity: sparsity)), "\(sparsity)")
        }
        XCTAssertNoThrow(try SyntheticModel.validate(.init(shape: .llama13B, sparsity: 0.7, type: .f16)))

        // The command line: each mistake is a usage error (status 2) naming the flag.
        let binary = TestData.packageRoot.appendingPathComponent(".build/release/ember")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            XCTFail("\(binary.path) is missing: run `swift build -c release` first")
            return
        }
        let output = directory.appendingPathComponent("never.gguf").path
        let cases: [([String], String)] = [
            (["--shape", "70b"], "--shape"),
            (["--type", "q4_k"], "--type"),
            (["--type", "bogus"], "--type"),
            (["--sparsity", "1.2"], "--sparsity"),
            (["--sparsity", "many"], "--sparsity"),
            (["--act", "silu"], "--act"),
            (["--seed", "-3"], "--seed"),
        ]
        for (flags, message) in cases {
            let process = Process()
            process.executableURL = binary
            process.arguments = ["synth", "-o", output] + flags
            let err = Pipe()
            process.standardError = err
            process.standardOutput = Pipe()
            try process.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            XCTAssertEqual(process.terminationStatus, 2, "\(flags): \(text)")
            XCTAssertTrue(text.contains(message), "\(flags): \(text)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: output))
    }
}
