@testable import EmberCore
import Foundation
import XCTest

/// Sparse FFNs of batches of several sequences (continuous batching) on PowerInfer's own files
/// (their predictors, neuron-major downs; Fixtures/powerinfer): a decoding step over several
/// sequences at once gives each sequence the logits it gets decoded alone, which the
/// PowerInfer reference tests compare with PowerInfer's.
final class BatchedSparsityTests: XCTestCase {
    /// ReGLU with a Q4_0 neuron-major down, dReLU, an ungated ReLU FFN, and OPT's biases.
    static let files: [(name: String, path: URL)] = ["relu-llama.q4_0", "bamboo.f16", "relu-falcon.f16"].map {
        ($0, PowerInferReferenceTests.folder.appendingPathComponent($0 + ".powerinfer.gguf"))
    } + [("opt-tiny.f16", TestData.fixtures.appendingPathComponent("opt-tiny/opt-tiny.f16.powerinfer.gguf"))]

    /// The fixtures' prompts, and each once more without its first token (more sequences).
    static func prompts(_ name: String, path: URL) throws -> [[Int32]] {
        let json = name.hasPrefix("opt") ? path.deletingLastPathComponent().appendingPathComponent("reference.json")
            : PowerInferReferenceTests.folder.appendingPathComponent("expected/\(name)/results.json")
        let runs = try XCTUnwrap(try TestData.json(json)["runs"] as? [String: Any])
        let prompts = try runs.keys.sorted().map { key in
            try XCTUnwrap((runs[key] as? [String: Any])?["prompt_ids"] as? [Int]).map(Int32.init)
        }
        return prompts + prompts.map { Array($0.dropFirst()) }.filter { !$0.isEmpty }
    }

    /// Each prompt read by a sequence alone, then one greedy token decoded: the logits of both.
    func alone(_ model: Model, sparsity: SparsityMode?, prompts: [[Int32]]) throws -> [(prompt: [Float], step: [Float])] {
        try prompts.map { prompt in
            let context = try PowerInferReferenceTests.context(model, sparsity: sparsity)
            context.sparse!.batchRule = .alwaysSparse
            let first = try context.evaluate(prompt)
            return (first, try context.evaluate([argmax(first)]))
        }
    }

    /// Prompts read one sequence at a time into caches of their own (the batch path of a
    /// prompt), then one step decodes a token of every sequence in one forward pass. With the
    /// union read sparsely, every row's logits are bit for bit those of its sequence alone:
    /// every product gives a row the bits it gets alone whatever the batch's kernel path, and the
    /// batched sparse FFN keeps each row's own neurons and summation order. Sent to the dense
    /// products instead, the rows get the masked dense FFN: the same neurons, other sums, so
    /// within the tolerance the PowerInfer reference tests allow against PowerInfer's logits.
    func testDecodingStepOfSeveralSequencesEqualsEachAlone() throws {
        for file in Self.files {
            let model = try Model(path: file.path.path)
            let config = model.language.config
            let prompts = try Self.prompts(file.name, path: file.path)
            XCTAssertGreaterThanOrEqual(prompts.count, 4, file.name)
            // nil: the file's predictors (PowerInfer's mode); exact: ReLU zeros, found by the dense gate.
            for sparsity in [nil, SparsityMode.exact] as [SparsityMode?] {
                let label = "\(file.name) \(sparsity.map { "\($0)" } ?? "predictor")"
                let expected = try alone(model, sparsity: sparsity, prompts: prompts)
                let context = try PowerInferReferenceTests.context(model, sparsity: sparsity)
                let execution = try XCTUnwrap(context.sparse)
                execution.batchRule = .alwaysSparse
                let caches = prompts.map { _ in KVCache(config: config, capacity: context.contextLength, type: context.cache.type) }
                let logits = Matrix(rows: prompts.count, length: config.vocabularySize)
                for (s, prompt) in prompts.enumerated() {
                    try model.language.forward(batch: prompt.enumerated().map { BatchRow(token: $1, cache: caches[s], position: $0) },
                                               pass: context.pass, logitRows: [prompt.count - 1], into: logits)
                    XCTAssertEqual(logits.array(row: 0), expected[s].prompt, "\(label): prompt \(s) read into its own cache")
                }
                let step = prompts.indices.map {
                    BatchRow(token: argmax(expected[$0].prompt), cache: caches[$0], position: prompts[$0].count)
                }
                let before = execution.batchCounts[prompts.count] ?? SparseBatchCounts()  // a prompt may be as long
                for rule in [SparseBatchRule.alwaysSparse, .alwaysDense] {
                    execution.batchRule = rule
                    for (s, prompt) in prompts.enumerated() { caches[s].truncate(to: prompt.count) }
                    try model.language.forward(batch: step, pass: context.pass, logitRows: Array(prompts.indices), into: logits)
                    for s in prompts.indices {
                        if rule == .alwaysSparse {
                            XCTAssertEqual(logits.array(row: s), expected[s].step, "\(label): sequence \(s) in the batch")
                        } else {
                            PowerInferReferenceTests.compare(logits.array(row: s), expected[s].step,
                                                             tolerance: PowerInferReferenceTests.tolerance(file.name),
                                                             "\(label): sequence \(s) in a dense batch")
                        }
                    }
                }
                let after = try XCTUnwrap(execution.batchCounts[prompts.count], label)
                let (passes, active, union) = (after.passes - before.passes, after.activeNeurons - before.activeNeurons,
                                               after.unionNeurons - before.unionNeurons)
                XCTAssertEqual(passes, 2 * config.layerCount, label)
                XCTAssertEqual(after.densePasses - before.densePasses, config.layerCount, label)
                // The union holds every row's set, and no more than their sum.
                XCTAssertGreaterThanOrEqual(union * prompts.count, active, label)
                XCTAssertLessThanOrEqual(union, active, label)
                if sparsity == .exact {
                    // ReLU's own zeros differ from row to row (the fixtures' predictors keep the
                    // same neurons for every token): a union larger than a row's set, yet sparse.
                    XCTAssertGreaterThan(union * prompts.count, active, label)
                    XCTAssertLessThan(union, passes * config.feedForwardLength, label)
                }
            }
        }
    }

    /// Hybrid placement: a batch of several sequences runs its whole FFN on the CPU (the
    /// device's FFN takes one row; it keeps doing every single-token step), so a hybrid
    /// context's batched step gives the CPU-only one's logits bit for bit and leaves the
    /// device's counts alone, while its single-token steps still use the device.
    func testHybridContextBatchesOnTheCPU() throws {
        try TestData.requireOpenCL("hybrid runs with batches")
        let name = "relu-llama.q4_0"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-batched-hybrid-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent(name + ".powerinfer.gguf").path
        try FileManager.default.copyItem(atPath: PowerInferReferenceTests.folder.appendingPathComponent(name + ".powerinfer.gguf").path,
                                         toPath: path)
        let model = try Model(path: path)
        let config = model.language.config
        try PowerInferReferenceTests.writePowerInferPlacement(to: path + ".generated.gpuidx", layers: config.layerCount,
                                                              neurons: config.feedForwardLength, capacity: 4 << 20) { _ in
            stride(from: 0, to: config.feedForwardLength, by: 2).map { Int32($0) }
        }
        var options = SessionOptions()
        options.threads = 2
        options.contextLength = 128
        options.deviceMemoryBudget = 64 << 20
        var assembly = SessionAssembly(model: model, options: options)
        let hybrid = try assembly.makeContext()
        let execution = try XCTUnwrap(hybrid.sparse)
        XCTAssertNotNil(execution.hybridDevice)
        let cpu = try PowerInferReferenceTests.context(model, sparsity: nil)
        let prompts = try Self.prompts(name, path: PowerInferReferenceTests.folder.appendingPathComponent(name + ".powerinfer.gguf"))
        var results: [[[Float]]] = []
        for context in [hybrid, cpu] {
            context.sparse!.batchRule = .alwaysSparse
            let caches = prompts.map { _ in KVCache(config: config, capacity: context.contextLength, type: context.cache.type) }
            let logits = Matrix(rows: prompts.count, length: config.vocabularySize)
            var firsts: [Int32] = []
            for (s, prompt) in prompts.enumerated() {
                try model.language.forward(batch: prompt.enumerated().map { BatchRow(token: $1, cache: caches[s], position: $0) },
                                           pass: context.pass, logitRows: [prompt.count - 1], into: logits)
                firsts.append(argmax(logits.array(row: 0)))
            }
            let before = execution.hybrid
            try model.language.forward(batch: prompts.indices.map {
                BatchRow(token: firsts[$0], cache: caches[$0], position: prompts[$0].count)
            }, pass: context.pass, logitRows: Array(prompts.indices), into: logits)
            XCTAssertEqual(execution.hybrid, before, "batches leave the device alone")
            results.append(prompts.indices.map { logits.array(row: $0) })
        }
        XCTAssertEqual(results[0], results[1], "the hybrid context's batch is the CPU's")
        // Single tokens still go to the device.
        hybrid.reset()
        _ = try hybrid.evaluate(Array(prompts[0].prefix(1)))
        XCTAssertGreaterThan(execution.hybrid.deviceNeurons, 0)
        XCTAssertNil(execution.hybrid.failure)
    }
}
