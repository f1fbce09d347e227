@testable import EmberCore
import Foundation
import XCTest

/// SmolLM2-135M Q4_1 against llama.cpp's outputs in Fixtures/ (copied from ../shared/fixtures; see the README there).
final class ReferenceTests: XCTestCase {
    struct GreedyCase {
        let prompt: String
        let promptIDs: [Int32]
        let greedyIDs: [Int32]
        let margins: [Double]
        let logitsFile: String
    }

    static func greedyCases() throws -> [GreedyCase] {
        let reference = try TestData.json(TestData.smolFixtures.appendingPathComponent("reference.json"))
        let cases = try XCTUnwrap(reference["greedy"] as? [[String: Any]])
        return try cases.map { item in
            GreedyCase(prompt: try XCTUnwrap(item["prompt"] as? String),
                       promptIDs: try XCTUnwrap(item["prompt_ids"] as? [Int]).map(Int32.init),
                       greedyIDs: try XCTUnwrap(item["greedy_ids"] as? [Int]).map(Int32.init),
                       margins: try XCTUnwrap(item["margins"] as? [Double]),
                       logitsFile: try XCTUnwrap(item["logits_file"] as? String))
        }
    }

    /// How far Ember's logits may sit from llama.cpp's. Both multiply by activations rounded to
    /// 8 bits per block of 32, and a block holding an outlier channel has a coarse step, so a
    /// rounding that flips either way (from float summation order alone) moves later layers
    /// visibly: Ember's own AVX2 and portable paths, equally exact, differ from each other by
    /// 0.19 mean |Δlogit| on the first prompt, and from a float64 reference by 0.11-0.36, while
    /// llama.cpp sits 0.10-0.14 from that reference. Measured against llama.cpp: mean 0.12-0.26,
    /// max 0.94, KL divergence at most 0.005 nats, and among the top 20 tokens the differences
    /// spread by at most 0.57 (what matters for which token wins). Perplexity, the aggregate,
    /// agrees within 0.1 %.
    enum LogitTolerance {
        static let mean: Float = 0.4
        static let maximum: Float = 1.5
        static let klDivergence = 0.02
    }

    /// Two tokens whose llama.cpp logits are closer than this can legitimately swap; any other
    /// divergence is a bug. Teacher-forced along llama.cpp's tokens, Ember's own equally exact
    /// arithmetics (AVX2 or portable kernels, F16 or F32 cache) put the gap between llama.cpp's
    /// top two tokens at step 10 of "Once upon a time, in a small village," anywhere from -0.07
    /// to 0.57 where llama.cpp's is 0.63: valid roundings move a top-two gap by up to 0.70 (the
    /// 0.57 spread above was measured on the prompts' last positions only), hence 0.75.
    static let flipMargin = 0.75

    static func klDivergence(_ p: [Float], _ q: [Float]) -> Double {
        func logSoftmax(_ x: [Float]) -> [Double] {
            let m = Double(x.max() ?? 0)
            let sum = x.reduce(0.0) { $0 + exp(Double($1) - m) }
            return x.map { Double($0) - m - log(sum) }
        }
        let lp = logSoftmax(p), lq = logSoftmax(q)
        return zip(lp, lq).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) }
    }

    func testLastPositionLogitsMatchLlamaCpp() throws {
        let model = try TestData.model(.smolLM2)
        let session = Context(model: model, threads: 2, contextLength: 256)
        for test in try Self.greedyCases() {
            session.reset()
            let logits = Array(try session.evaluate(test.promptIDs))
            let reference = try TestData.floats(TestData.smolFixtures.appendingPathComponent(test.logitsFile))
            XCTAssertEqual(logits.count, reference.count)
            let differences = zip(logits, reference).map { abs($0 - $1) }
            let maximum = differences.max() ?? 0
            let mean = differences.reduce(0, +) / Float(differences.count)
            XCTAssertLessThan(maximum, LogitTolerance.maximum, "max |Δlogit| for \(test.prompt.debugDescription)")
            XCTAssertLessThan(mean, LogitTolerance.mean, "mean |Δlogit| for \(test.prompt.debugDescription)")
            XCTAssertLessThan(Self.klDivergence(reference, logits), LogitTolerance.klDivergence, "KL for \(test.prompt.debugDescription)")
            XCTAssertEqual(argmax(logits), test.greedyIDs[0])
        }
    }

    func testGreedyDecodingMatchesLlamaCpp() throws {
        let model = try TestData.model(.smolLM2)
        let session = Context(model: model, threads: 2, contextLength: 256)
        for test in try Self.greedyCases() {
            session.reset()
            var sampler = Sampler(.greedy)
            var produced: [Int32] = []
            _ = try session.generate(prompt: test.promptIDs, maxTokens: test.greedyIDs.count, sampler: &sampler,
                                     isEnd: { $0 == 2 }) { produced.append($0); return true }
            for (step, (ours, theirs)) in zip(produced, test.greedyIDs).enumerated() where ours != theirs {
                // After a legitimate swap the texts differ, so nothing later can be compared.
                XCTAssertLessThan(test.margins[step], Self.flipMargin,
                                  "step \(step) of \(test.prompt.debugDescription): \(ours) instead of \(theirs) though llama.cpp's margin was \(test.margins[step])")
                break
            }
            XCTAssertEqual(produced.count, test.greedyIDs.count, "length for \(test.prompt.debugDescription)")
        }
    }

    func testPerplexityMatchesLlamaCpp() throws {
        let model = try TestData.model(.smolLM2)
        let reference = try XCTUnwrap(try TestData.json(TestData.smolFixtures.appendingPathComponent("reference.json"))["perplexity"] as? [String: Any])
        let text = try String(contentsOf: TestData.fixtures.appendingPathComponent("eval-gpl3.txt"), encoding: .utf8)
        let tokenizer = try Tokenizer(file: model.file)
        let tokens = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
        let session = Context(model: model, threads: 2, contextLength: 256, batchSize: 256)
        let result = try session.perplexity(of: tokens, context: try XCTUnwrap(reference["ctx"] as? Int))
        XCTAssertEqual(result.chunks, reference["chunks"] as? Int)
        XCTAssertEqual(result.scoredTokens, reference["scored_tokens"] as? Int)
        let expected = try XCTUnwrap(reference["ppl"] as? Double)
        // The bar: within 1 % of llama.cpp's figure.
        XCTAssertEqual(result.perplexity, expected, accuracy: expected * 0.01)
    }

    func testContextOverflowIsAnError() throws {
        let model = try TestData.model(.smolLM2)
        let session = Context(model: model, threads: 1, contextLength: 8)
        XCTAssertThrowsError(try session.evaluate(Array(repeating: 1, count: 9))) { error in
            XCTAssertEqual(error as? ModelError, .contextOverflow(needed: 9, context: 8))
        }
        try session.evaluate(Array(repeating: 1, count: 8))
        XCTAssertThrowsError(try session.evaluate([1]))
        XCTAssertThrowsError(try session.evaluate([Int32(model.config.vocabularySize)])) { error in
            XCTAssertEqual(error as? ModelError, .invalidToken(id: model.config.vocabularySize, vocabularySize: model.config.vocabularySize))
        }
    }

    /// Prompt evaluation in batches (matrix products) and token by token must agree.
    func testBatchedPrefillEqualsTokenByToken() throws {
        let model = try TestData.model(.smolLM2)
        let prompt = try Self.greedyCases()[1].promptIDs
        let batched = Context(model: model, threads: 2, contextLength: 64, batchSize: 64)
        let single = Context(model: model, threads: 2, contextLength: 64, batchSize: 1)
        let a = Array(try batched.evaluate(prompt))
        let b = Array(try single.evaluate(prompt))
        // The prefill kernels add in another order than the decode ones, which is enough to
        // flip some 8-bit activation roundings (see LogitTolerance): the same bounds apply.
        let differences = zip(a, b).map { abs($0 - $1) }
        XCTAssertLessThan(differences.reduce(0, +) / Float(differences.count), LogitTolerance.mean)
        XCTAssertLessThan(Self.klDivergence(a, b), LogitTolerance.klDivergence)
        XCTAssertEqual(argmax(a), argmax(b))
    }
}
