import EmberCore
import Foundation
import XCTest

/// Every reduction runs in a fixed order whatever the thread split (matrix rows whole in one
/// thread, attention per row and head, sparse down by owned output columns), so a run gives
/// the same logits, bit for bit, at any thread count: dense and sparse, prompt and decode.
/// Without this, a neuron scored within rounding of its threshold flips with `-t` and the
/// text changes.
final class ThreadCountTests: XCTestCase {
    /// Logits after `prompt` (evaluated as one batch), then after each of four greedy tokens
    /// decoded one at a time.
    func logits(_ model: Model, _ options: SessionOptions, prompt: [Int32]) async throws -> [[Float]] {
        let session = try Session(model: model, options: options)
        var all = [try await session.logits(after: prompt)]
        for _ in 0..<4 {
            let next = Int32(all.last!.indices.max { all.last![$0] < all.last![$1] }!)
            all.append(try await session.logits(after: [next], fromStart: false))
        }
        return all
    }

    func assertSameAtEveryThreadCount(_ model: Model, sparsity: SparsityMode?, prompt: String,
                                      file: StaticString = #filePath, line: UInt = #line) async throws {
        let ids = model.tokenize(prompt)
        var options = SessionOptions()
        options.sparsity = sparsity
        options.device = .off
        var first: [[Float]]?
        for threads in 1...3 {
            options.threads = threads
            let result = try await logits(model, options, prompt: ids)
            if let first {
                // Exact: any difference is an order of summation that depends on the split.
                XCTAssertTrue(first == result, "\(sparsity?.description ?? "dense"): logits at -t \(threads) differ from -t 1",
                              file: file, line: line)
            } else {
                first = result
            }
        }
    }

    func testSmolLM2DenseLogitsAreTheSameAtEveryThreadCount() async throws {
        let model = try Model(path: try TestData.modelPath(.smolLM2))
        try await assertSameAtEveryThreadCount(model, sparsity: .dense, prompt: "The capital of France is a city where")
    }

    /// PowerInfer's files with their own predictors (Fixtures/powerinfer): the predictor picks
    /// neurons, the sparse kernels gather them; d = 128 gives two 64-column down shares.
    func testPowerInferPredictorLogitsAreTheSameAtEveryThreadCount() async throws {
        let folder = TestData.fixtures.appendingPathComponent("powerinfer")
        for name in ["relu-llama.q4_0", "bamboo.f16"] {
            let model = try Model(path: folder.appendingPathComponent(name + ".powerinfer.gguf").path)
            try await assertSameAtEveryThreadCount(model, sparsity: .predictor, prompt: "Once upon a time there was")
            try await assertSameAtEveryThreadCount(model, sparsity: .dense, prompt: "Once upon a time there was")
        }
    }
}
