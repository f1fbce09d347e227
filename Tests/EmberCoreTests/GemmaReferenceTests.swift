import EmberCore
import Foundation
import XCTest

/// Gemma 3 270M Q4_K_M against llama.cpp's greedy decoding (Fixtures/gemma3-greedy.json, made
/// by scripts/make-gemma-greedy-fixture with llama-cpp-python).
final class GemmaReferenceTests: XCTestCase {
    /// Measured across the four prompts, Ember's last-prompt logits differ from llama.cpp's by
    /// at most about 0.1 (both quantize activations to 8 bits; summation order and rounding
    /// differ). A swap between two tokens closer than twice the worst-case difference is
    /// legitimate; any other divergence is a bug.
    static let logitTolerance: Float = 0.3
    static let flipMargin = 2 * Double(logitTolerance)

    func testGreedyDecodingAndTopLogitsMatchLlamaCpp() throws {
        let fixture = try TestData.json(TestData.localFixtures.appendingPathComponent("gemma3-greedy.json"))
        XCTAssertEqual(fixture["model_sha256"] as? String, KnownModel.gemma3.sha256)
        let cases = try XCTUnwrap(fixture["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 4)
        let model = try TestData.model(.gemma3)
        let tokenizer = try Tokenizer(file: model.file)
        let session = Session(model: model, threads: 2, contextLength: 192)
        for test in cases {
            let prompt = try XCTUnwrap(test["prompt"] as? String)
            let promptIDs = try XCTUnwrap(test["prompt_ids"] as? [Int]).map(Int32.init)
            let expected = try XCTUnwrap(test["greedy_ids"] as? [Int]).map(Int32.init)
            let margins = try XCTUnwrap(test["margins"] as? [Double])
            let top10 = try XCTUnwrap(test["last_prompt_top10"] as? [[Double]])
            XCTAssertEqual(tokenizer.encode(prompt, addSpecial: true, parseSpecial: true), promptIDs)

            session.reset()
            let logits = try session.evaluate(promptIDs)
            for pair in top10 {
                XCTAssertEqual(logits[Int(pair[0])], Float(pair[1]), accuracy: Self.logitTolerance,
                               "logit of token \(Int(pair[0])) after \(prompt.debugDescription)")
            }

            session.reset()
            var sampler = Sampler(.greedy)
            var produced: [Int32] = []
            _ = try session.generate(prompt: promptIDs, maxTokens: expected.count, sampler: &sampler,
                                     isEnd: { _ in false }) { produced.append($0); return true }
            for (step, (ours, theirs)) in zip(produced, expected).enumerated() where ours != theirs {
                XCTAssertLessThan(margins[step], Self.flipMargin,
                                  "step \(step) of \(prompt.debugDescription): \(ours) instead of \(theirs) though llama.cpp's margin was \(margins[step])")
                break
            }
            XCTAssertEqual(produced.count, expected.count)
        }
    }
}
