@testable import EmberCore
import Foundation
import XCTest

/// Tiny random models of architectures Ember has no real file of, against llama.cpp's outputs on
/// the same files (Fixtures/README.md says how they were made and what llama.cpp computes).
final class TinyModelReferenceTests: XCTestCase {
    struct Reference {
        let model: LanguageModel
        let tokenizer: Tokenizer
        let cases: [(promptIDs: [Int32], greedyIDs: [Int32], margins: [Double], greedyLogits: [Double], logits: [Float])]
        let tokenization: [(text: String, ids: [Int32])]
    }

    static func reference(_ name: String) throws -> Reference {
        let folder = TestData.fixtures.appendingPathComponent(name)
        let json = try TestData.json(folder.appendingPathComponent("reference.json"))
        let file = try GGUFFile(path: folder.appendingPathComponent("model.gguf").path)
        let cases = try XCTUnwrap(json["greedy"] as? [[String: Any]]).map { item in
            (promptIDs: try XCTUnwrap(item["prompt_ids"] as? [Int]).map(Int32.init),
             greedyIDs: try XCTUnwrap(item["greedy_ids"] as? [Int]).map(Int32.init),
             margins: try XCTUnwrap(item["margins"] as? [Double]),
             greedyLogits: try XCTUnwrap(item["greedy_logits"] as? [Double]),
             logits: try TestData.floats(folder.appendingPathComponent(try XCTUnwrap(item["logits_file"] as? String))))
        }
        let tokenization = try XCTUnwrap(json["tokenization"] as? [[String: Any]]).map { item in
            (text: try XCTUnwrap(item["text"] as? String), ids: try XCTUnwrap(item["ids_parse_special"] as? [Int]).map(Int32.init))
        }
        return Reference(model: try LanguageModel(file: file), tokenizer: try Tokenizer(file: file), cases: cases,
                         tokenization: tokenization)
    }

    /// llama.cpp rounds activations to F16 before F16 matrix products, keeps an F16 KV cache and
    /// sums flash attention in F16; it lies 0.034 from a float64 forward pass on these logits
    /// (standard deviation about 4), and Ember, with F16 activations too but an F32 cache, by the
    /// same order. Twice the sum, rounded up: 0.1. A wrong rope layout or a missing q/k norm
    /// moves logits by 3 to 15.
    static let tolerance: Float = 0.1

    /// Logits at the end of each prompt, then teacher-forced along llama.cpp's greedy tokens:
    /// the chosen logit at every step within the tolerance, and the same argmax wherever
    /// llama.cpp's top-two margin exceeds twice the tolerance.
    func assertMatchesLlamaCpp(_ name: String) throws {
        let reference = try Self.reference(name)
        let context = Context(model: reference.model, threads: 2, contextLength: 64)
        for (index, test) in reference.cases.enumerated() {
            context.reset()
            var logits = try context.evaluate(test.promptIDs)
            let worst = zip(logits, test.logits).map { abs($0 - $1) }.max() ?? .infinity
            print("\(name) prompt \(index): max |Δlogit| against llama.cpp \(worst)")
            XCTAssertLessThan(worst, Self.tolerance, "\(name) prompt \(index): all logits at the last prompt position")
            for (step, token) in test.greedyIDs.enumerated() {
                XCTAssertEqual(Double(logits[Int(token)]), test.greedyLogits[step], accuracy: Double(Self.tolerance),
                               "\(name) prompt \(index) step \(step)")
                if test.margins[step] > 2 * Double(Self.tolerance) {
                    XCTAssertEqual(argmax(logits), token, "\(name) prompt \(index) step \(step)")
                }
                logits = try context.evaluate([token])
            }
        }
    }

    func assertTokenizesLikeLlamaCpp(_ name: String) throws {
        let reference = try Self.reference(name)
        for item in reference.tokenization {
            XCTAssertEqual(reference.tokenizer.encode(item.text, addSpecial: true, parseSpecial: true), item.ids,
                           "\(name): \(item.text.debugDescription)")
        }
    }

    func testQwen3MatchesLlamaCpp() throws {
        try assertMatchesLlamaCpp("qwen3-tiny")
        try assertTokenizesLikeLlamaCpp("qwen3-tiny")
    }

    /// Falcon-7B layout: fused qkv with one kv head, NeoX rope, parallel attention and GELU FFN
    /// from one LayerNorm; the `falcon` pre-tokenizer (punctuation runs, GPT-2, digit triples).
    /// llama.cpp lies 0.0065 from a float64 pass here (Fixtures/README.md); a wrong rope layout
    /// moves logits by 3.
    func testFalcon7BMatchesLlamaCpp() throws {
        try assertMatchesLlamaCpp("falcon-tiny-7b")
        try assertTokenizesLikeLlamaCpp("falcon-tiny-7b")
    }

    /// Falcon-40B layout: grouped kv (8 heads, 2 kv heads) read from the fused qkv as all q,
    /// then all k, then all v; `attn_norm_2` feeds attention and `attn_norm` the FFN; the head
    /// tied to the embedding; F = 2d, not 4d. Swapping the two norms moves logits by 8.6.
    func testFalcon40BMatchesLlamaCpp() throws {
        try assertMatchesLlamaCpp("falcon-tiny-40b")
        try assertTokenizesLikeLlamaCpp("falcon-tiny-40b")
        let model = try Self.reference("falcon-tiny-40b").model
        XCTAssertEqual(model.config.feedForwardLength, 256)
        XCTAssertEqual(model.architecture.head.output.weight.name, "token_embd.weight", "the head is tied to the embedding")
    }

    /// Qwen3 through the public API too: the architecture is found by its name and generates.
    func testQwen3LoadsThroughThePublicAPI() throws {
        let model = try Model(path: TestData.fixtures.appendingPathComponent("qwen3-tiny/model.gguf").path)
        XCTAssertEqual(model.architecture, "qwen3")
        XCTAssertEqual(model.vocabularySize, 1024)
    }
}
