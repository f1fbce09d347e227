@testable import EmberCore
import Foundation
import XCTest

/// The sparse FFN modes on the real model: the single-token path (gathered rows, neuron-major
/// down) must compute what the batch path (dense products with left-out neurons zeroed) does,
/// and each mode must skip what it says.
final class SparseExecutionTests: XCTestCase {
    func testModesParse() {
        XCTAssertEqual(SparsityMode("dense"), .dense)
        XCTAssertEqual(SparsityMode("exact"), .exact)
        XCTAssertEqual(SparsityMode("threshold:0.6"), .threshold(0.6))
        XCTAssertEqual(SparsityMode("down:0.5"), .down(0.5))
        XCTAssertEqual(SparsityMode("predictor"), .predictor)
        XCTAssertEqual(SparsityMode("down"), .down(SparsityMode.defaultDownSparsity))
        XCTAssertEqual(SparsityMode("threshold"), .threshold(SparsityMode.defaultThresholdSparsity))
        for bad in ["", "sparse", "threshold:", "threshold:1.5", "down:0", "down:x", "exact:0.5"] {
            XCTAssertNil(SparsityMode(bad), bad)
        }
    }

    /// Statistics of SmolLM2 on a little text, shared by the tests below.
    static let statistics: Result<ActivationStatistics, Error> = Result {
        let model = try TestData.model(.smolLM2)
        let text = try String(contentsOf: TestData.fixtures.appendingPathComponent("eval-gpl3.txt"), encoding: .utf8)
        let tokens = try Tokenizer(file: model.file).encode(text, addSpecial: false, parseSpecial: false)
        let session = Context(model: model, threads: 2, contextLength: 128, batchSize: 128)
        return try session.profileActivations(Array(tokens.prefix(512)), context: 128, targets: [0.5, 0.7]).statistics
    }

    /// A real FFN input: the normed residual of a prompt's last token at `layer`, with the pass
    /// as at that layer's FFN.
    func passAtLayer(_ layer: Int, model: LanguageModel, prompt given: [Int32]? = nil) throws -> (pass: ForwardPass, input: Matrix) {
        let session = Context(model: model, threads: 2, contextLength: 64, batchSize: 1)
        let prompt = try given ?? ReferenceTests.greedyCases()[1].promptIDs
        let input = try FeedForwardInputCapture.input(of: layer, context: session, prompt: prompt)
        retained.append(session)
        return (session.pass, input)
    }
    private var retained: [Context] = []

    /// The FFN output of the single-token path and of the batch path on the same input.
    /// Also checks both computed the same number of neurons.
    func bothPaths(_ execution: SparseExecution, layer: Int, at point: (pass: ForwardPass, input: Matrix), model: LanguageModel,
                   file: StaticString = #filePath, line: UInt = #line) -> (decode: [Float], masked: [Float]) {
        let w = model.architecture.feedForward(layer), pass = point.pass
        execution.feedForward(w, layer: layer, input: point.input, into: pass.projected, pass: pass)
        let decode = pass.projected.array(row: 0)
        let decodeCount = execution.activeNeurons
        execution.maskedFeedForward(w, layer: layer, input: point.input, into: pass.projected, pass: pass)
        let masked = pass.projected.array(row: 0)
        XCTAssertEqual(execution.activeNeurons - decodeCount, decodeCount, "neurons computed", file: file, line: line)
        return (decode, masked)
    }

    /// Both paths select the same neurons (the gathered rows are bit-identical to the dense
    /// ones); they differ in the down projection only: Q4_1 weights times 8-bit activations
    /// against the same weights re-quantized neuron-major to Q8_0 and summed in float. Each
    /// rounds to about 1 % of a block's largest value, so the outputs agree within 3 %.
    func assertSameFFN(_ a: [Float], _ b: [Float], _ label: String) {
        let error = zip(a, b).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
        let norm = b.map { $0 * $0 }.reduce(0, +).squareRoot()
        XCTAssertGreaterThan(norm, 0, label)
        XCTAssertLessThan(error / norm, 0.03, label)
    }

    func testDecodePathComputesWhatTheBatchPathDoes() throws {
        let model = try TestData.model(.smolLM2)
        let statistics = try Self.statistics.get()
        let config = model.config
        let d = config.embeddingLength, f = config.feedForwardLength, r = 8
        var random = SplitMix64(seed: 7)  // the same predictor on every run
        func weights(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -0.1...0.1, using: &random) } }
        let predictor = PredictorSet(fc1: (0..<config.layerCount).map { _ in weights(r * d) },
                                     fc2: (0..<config.layerCount).map { _ in weights(f * r) },
                                     ranks: Array(repeating: r, count: config.layerCount),
                                     thresholds: Array(repeating: 0, count: config.layerCount), inputLength: d, neuronCount: f)
        for layer in [2, 17] {
            let point = try passAtLayer(layer, model: model)
            for mode in [SparsityMode.threshold(0.5), .down(0.7), .predictor] {
                let execution = try SparseExecution(mode: mode, model: model, statistics: statistics, predictor: predictor,
                                                    pool: point.pass.pool)
                let (decode, masked) = bothPaths(execution, layer: layer, at: point, model: model)
                assertSameFFN(decode, masked, "\(mode) at layer \(layer)")
                XCTAssertGreaterThan(execution.reachedSparsity, 0.2, "\(mode) at layer \(layer)")
            }
        }
    }

    /// A batch of rows from several sequences (a continuous-batching step) reads the union of
    /// the rows' active sets, yet each row gets exactly its own sparse FFN: the single-token
    /// path's output for that row, bit for bit (same selection, the same bits from every product path,
    /// same gathered values, same down sums in the same order and thread shares). Sent to the
    /// dense products by the rule, the rows get the masked dense FFN, which the single-token
    /// path equals within 3 % (the down projection's Q8_0 neuron-major copy, as above).
    func testRowsOfSeveralSequencesGetTheirOwnSparseFFN() throws {
        let model = try TestData.model(.smolLM2)
        let statistics = try Self.statistics.get()
        let config = model.config
        let d = config.embeddingLength, f = config.feedForwardLength, r = 8
        var random = SplitMix64(seed: 7)
        func weights(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -0.1...0.1, using: &random) } }
        let predictor = PredictorSet(fc1: (0..<config.layerCount).map { _ in weights(r * d) },
                                     fc2: (0..<config.layerCount).map { _ in weights(f * r) },
                                     ranks: Array(repeating: r, count: config.layerCount),
                                     thresholds: Array(repeating: 0, count: config.layerCount), inputLength: d, neuronCount: f)
        let layer = 9, rows = 5
        let w = model.architecture.feedForward(layer)
        // Real FFN inputs, each the last token of another prompt.
        let cases = try ReferenceTests.greedyCases()
        let points = try (0..<rows).map { try passAtLayer(layer, model: model, prompt: cases[$0 % cases.count].promptIDs + [Int32($0 + 10)]) }
        // The batch: one decoding row per sequence, each with its own cache (5 rows: the
        // products take the repacked kernels).
        let context = Context(model: model, threads: 2, contextLength: 64, batchSize: 8)
        retained.append(context)
        let caches = (0..<rows).map { _ in KVCache(config: config, capacity: 64, type: context.cache.type) }
        let pass = context.pass
        pass.begin(rows: caches.map { BatchRow(token: 1, cache: $0, position: 0) }, embedding: model.architecture.embedding)
        let input = Matrix(rows: rows, length: d)
        for (t, point) in points.enumerated() {
            input.row(t).update(from: point.input.row(0), count: d)
            pass.x.row(t).update(from: point.pass.x.row(0), count: d)
        }
        for mode in [SparsityMode.threshold(0.5), .down(0.7), .predictor] {
            var single: [[Float]] = [], singleActive = 0
            for point in points {
                let execution = try SparseExecution(mode: mode, model: model, statistics: statistics, predictor: predictor,
                                                    pool: point.pass.pool)
                execution.feedForward(w, layer: layer, input: point.input, into: point.pass.projected, pass: point.pass)
                single.append(point.pass.projected.array(row: 0))
                singleActive += execution.activeNeurons
            }
            for rule in [SparseBatchRule.alwaysSparse, .alwaysDense] {
                let dense = rule == .alwaysDense
                let execution = try SparseExecution(mode: mode, model: model, statistics: statistics, predictor: predictor,
                                                    pool: pass.pool)
                execution.batchRule = rule
                execution.feedForward(w, layer: layer, input: input, into: pass.projected, pass: pass)
                XCTAssertEqual(execution.activeNeurons, singleActive, "\(mode): each row selects what it selects alone")
                let counts = try XCTUnwrap(execution.batchCounts[rows])
                XCTAssertEqual(counts.passes, 1)
                XCTAssertEqual(counts.densePasses, dense ? 1 : 0)
                XCTAssertGreaterThanOrEqual(counts.unionNeurons * rows, singleActive, "the union holds every row's set")
                XCTAssertLessThanOrEqual(counts.unionNeurons, singleActive)
                XCTAssertLessThan(counts.unionNeurons, f, "\(mode): a union that leaves nothing out tests little")
                for t in 0..<rows {
                    let batched = pass.projected.array(row: t)
                    if dense {
                        assertSameFFN(batched, single[t], "\(mode), row \(t), dense products")
                    } else {
                        XCTAssertEqual(batched, single[t], "\(mode), row \(t): bit for bit the single token's")
                    }
                }
            }
        }
    }

    func testSelectingEveryNeuronEqualsTheDenseFFN() throws {
        let model = try TestData.model(.smolLM2)
        let config = model.config
        let d = config.embeddingLength, f = config.feedForwardLength
        // A rank-1 predictor with zero weights scores 0 everywhere; a threshold of 0 keeps all.
        let everyone = PredictorSet(fc1: Array(repeating: [Float](repeating: 0, count: d), count: config.layerCount),
                                    fc2: Array(repeating: [Float](repeating: 0, count: f), count: config.layerCount),
                                    ranks: Array(repeating: 1, count: config.layerCount),
                                    thresholds: Array(repeating: 0, count: config.layerCount), inputLength: d, neuronCount: f)
        let layer = 5
        let point = try passAtLayer(layer, model: model)
        point.pass.feedForward(model.architecture.feedForward(layer), layer: layer, input: point.input, into: point.pass.projected)
        let dense = point.pass.projected.array(row: 0)
        let execution = try SparseExecution(mode: .predictor, model: model, statistics: nil, predictor: everyone, pool: point.pass.pool)
        let (decode, masked) = bothPaths(execution, layer: layer, at: point, model: model)
        XCTAssertEqual(execution.reachedSparsity, 0)
        XCTAssertEqual(masked, dense, "the batch path with every neuron is the dense FFN")
        // Every neuron selected: the dense bytes, with down read from its Q8_0 neuron-major copy
        // (34 bytes per 32 values), plus the predictors.
        let neuronMajorDown = f * d / 32 * 34
        let downBytes = (0..<config.layerCount).map { model.architecture.feedForward($0).down.weight.byteCount }
        let expectedBytes = model.bytesPerToken + everyone.byteCount + downBytes.reduce(0) { $0 + neuronMajorDown - $1 }
        XCTAssertEqual(execution.weightBytesPerToken(model), expectedBytes)
        assertSameFFN(decode, dense, "decode path with every neuron")
    }

    func testThresholdsReachTheirTargetOnAnotherText() throws {
        let model = try TestData.model(.smolLM2)
        let session = Context(model: model, threads: 2, contextLength: 64)
        let sparse = try SparseExecution(mode: .threshold(0.7), model: model, statistics: try Self.statistics.get(), predictor: nil, pool: session.pool)
        session.sparse = sparse
        for test in try ReferenceTests.greedyCases() {
            session.reset()
            try session.evaluate(test.promptIDs)
        }
        // Calibrated on GPL text, measured on four short prompts: near, not at, the target.
        XCTAssertEqual(sparse.reachedSparsity, 0.7, accuracy: 0.1)
    }

    func testModesNeedWhatTheyUse() throws {
        let model = try TestData.model(.smolLM2)
        let pool = ThreadPool(threads: 1)
        XCTAssertThrowsError(try SparseExecution(mode: .exact, model: model, statistics: nil, predictor: nil, pool: pool)) {
            XCTAssertEqual($0 as? SparseExecutionError, .needsReLU)
        }
        XCTAssertThrowsError(try SparseExecution(mode: .threshold(0.5), model: model, statistics: nil, predictor: nil, pool: pool)) {
            XCTAssertEqual($0 as? SparseExecutionError, .needsStatistics(.threshold(0.5)))
        }
        XCTAssertThrowsError(try SparseExecution(mode: .down(0.6), model: model, statistics: try Self.statistics.get(), predictor: nil, pool: pool)) {
            XCTAssertEqual($0 as? SparseExecutionError, .targetMissing(0.6, available: [0.5, 0.7]))
        }
        XCTAssertThrowsError(try SparseExecution(mode: .predictor, model: model, statistics: nil, predictor: nil, pool: pool)) {
            XCTAssertEqual($0 as? SparseExecutionError, .needsPredictor)
        }
    }
}
