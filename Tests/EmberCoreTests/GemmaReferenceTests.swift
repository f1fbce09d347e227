@testable import EmberCore
import EmberDownload
import Foundation
import XCTest

/// Gemma 3 270M Q4_K_M against llama.cpp's greedy decoding (Fixtures/gemma3-greedy.json, made
/// by scripts/make-gemma-greedy-fixture with llama-cpp-python).
final class GemmaReferenceTests: XCTestCase {
    /// Gemma's logits are larger (top ones near 20) and its embedding scale amplifies the
    /// 8-bit activation rounding described in ReferenceTests: Ember's and llama.cpp's top
    /// logits each sit up to about 0.5 from a float64 reference, in opposite directions, by a
    /// nearly uniform shift that does not change which token wins. So the test compares the
    /// top-10 logits relative to the top one, where the measured spread is at most 0.63.
    static let relativeLogitTolerance: Float = 0.75
    /// A swap between two tokens closer than that tolerance is legitimate; nothing else is.
    static let flipMargin = Double(relativeLogitTolerance)

    func testGreedyDecodingAndTopLogitsMatchLlamaCpp() throws {
        let fixture = try TestData.json(TestData.localFixtures.appendingPathComponent("gemma3-greedy.json"))
        XCTAssertEqual(fixture["model_sha256"] as? String, KnownModel.gemma3.sha256)
        let cases = try XCTUnwrap(fixture["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 4)
        let model = try TestData.model(.gemma3)
        let tokenizer = try Tokenizer(file: model.file)
        let session = Context(model: model, threads: 2, contextLength: 192)
        for test in cases {
            let prompt = try XCTUnwrap(test["prompt"] as? String)
            let promptIDs = try XCTUnwrap(test["prompt_ids"] as? [Int]).map(Int32.init)
            let expected = try XCTUnwrap(test["greedy_ids"] as? [Int]).map(Int32.init)
            let margins = try XCTUnwrap(test["margins"] as? [Double])
            let top10 = try XCTUnwrap(test["last_prompt_top10"] as? [[Double]])
            XCTAssertEqual(tokenizer.encode(prompt, addSpecial: true, parseSpecial: true), promptIDs)

            session.reset()
            let logits = try session.evaluate(promptIDs)
            let top = top10[0], topID = Int(top[0])
            XCTAssertEqual(Int(argmax(logits)), topID, "top token after \(prompt.debugDescription)")
            for pair in top10.dropFirst() {
                let ours = logits[Int(pair[0])] - logits[topID]
                let theirs = Float(pair[1] - top[1])
                XCTAssertEqual(ours, theirs, accuracy: Self.relativeLogitTolerance,
                               "logit of token \(Int(pair[0])) relative to the top one after \(prompt.debugDescription)")
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
