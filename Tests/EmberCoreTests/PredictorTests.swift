import CEmberKernels
@testable import EmberCore
import Foundation
import XCTest

/// Predictors: the float GEMM, training, Ember's and PowerInfer's file formats, and prediction.
final class PredictorTests: XCTestCase {

    struct Rng {
        var generator: SplitMix64
        init(state: UInt64) { generator = SplitMix64(seed: state) }
        mutating func next() -> UInt64 { generator.next() }
        /// Uniform in [-1, 1).
        mutating func float() -> Float { Float(Int64(next() >> 40) - (1 << 23)) / Float(1 << 23) }
        mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
    }

    // MARK: GEMM

    func testGemmMatchesNaive() {
        var rng = Rng(state: 7)
        for portable in [false, true] {
            ember_force_portable(portable ? 1 : 0)
            defer { ember_force_portable(0) }
            for (m, n, k) in [(1, 1, 1), (7, 37, 29), (64, 48, 576), (13, 16, 0), (4, 17, 5)] {
                for transA in [0, 1] {
                    for transB in [0, 1] {
                        for beta: Float in [0, 0.5] {
                            let lda = (transA == 1 ? m : k) + 3, ldb = (transB == 1 ? k : n) + 2, ldc = n + 1
                            let a = rng.floats((transA == 1 ? k : m) * lda + 1), b = rng.floats((transB == 1 ? n : k) * ldb + 1)
                            var c = rng.floats(m * ldc)
                            var expected = c
                            for i in 0..<m {
                                for j in 0..<n {
                                    var sum = 0.0
                                    for p in 0..<k {
                                        let av = transA == 1 ? a[p * lda + i] : a[i * lda + p]
                                        let bv = transB == 1 ? b[j * ldb + p] : b[p * ldb + j]
                                        sum += Double(av) * Double(bv)
                                    }
                                    expected[i * ldc + j] = Float(sum) + (beta == 0 ? 0 : beta * expected[i * ldc + j])
                                }
                            }
                            ember_sgemm(Int32(transA), Int32(transB), Int64(m), Int64(n), Int64(k), a, Int64(lda), b, Int64(ldb),
                                        beta, &c, Int64(ldc))
                            // Products of values in [-1, 1): error below k·u·k plus rounding of beta·c.
                            let tolerance = Float(k + 2) * 1.2e-7 * Float(max(k, 1)).squareRoot() * 4 + 1e-6
                            for i in 0..<m {
                                for j in 0..<n {
                                    XCTAssertEqual(c[i * ldc + j], expected[i * ldc + j], accuracy: tolerance,
                                                   "m \(m) n \(n) k \(k) trans \(transA)\(transB) beta \(beta) portable \(portable) at \(i),\(j)")
                                }
                                // The padding column of C is never written.
                                XCTAssertEqual(c[i * ldc + n], expected[i * ldc + n])
                            }
                        }
                    }
                }
            }
        }
    }

    // MARK: training

    /// Labels from a random teacher of the same form (score = V · relu(U · x) ≥ 0, rank 8) are
    /// exactly learnable: a rank-16 student must recover them almost perfectly.
    func testTrainingLearnsASeparableProblem() {
        var rng = Rng(state: 11)
        let d = 32, f = 64, r = 8, n = 3000
        let u = rng.floats(r * d), v = rng.floats(f * r)
        var inputs = [Float](), labels = [UInt64]()
        for _ in 0..<n {
            let x = rng.floats(d).map { $0 * 3 }
            let h = (0..<r).map { i in max(0, (0..<d).reduce(Float(0)) { $0 + u[i * d + $1] * x[$1] }) }
            var word: UInt64 = 0
            for i in 0..<f where (0..<r).reduce(Float(0), { $0 + v[i * r + $1] * h[$1] }) >= 0 { word |= 1 << UInt64(i) }
            inputs += x
            labels.append(word)
        }
        let data = PredictorTrainingData(inputLength: d, neuronCount: f, tokenCount: n,
                                         layers: [PredictorTrainingData.Layer(inputs: inputs, labels: labels)])
        var options = PredictorTrainingOptions()
        options.minRank = 16
        options.maxRank = 16
        options.epochs = 30
        options.batchSize = 64
        options.weightType = .f32
        let pool = ThreadPool(threads: 2)
        let result = PredictorTrainer.train(data: data, layerCount: 1, options: options, pool: pool)
        let report = result.reports[0]
        print("separable: \(report)")
        XCTAssertEqual(report.rank, 16)
        XCTAssertGreaterThan(report.recall, 0.9)
        XCTAssertGreaterThan(report.precision, 0.9, "\(report)")
        XCTAssertLessThan(report.predictedShare, report.activeShare * 1.15)
        // Same seed, same predictor.
        let again = PredictorTrainer.train(data: data, layerCount: 1, options: options, pool: ThreadPool(threads: 1))
        XCTAssertEqual(again.reports[0].threshold, report.threshold)
        XCTAssertEqual(again.reports[0].recall, report.recall)
    }

    // MARK: files and prediction

    /// Float reference: score = fc2 · relu(fc1 · x), in double.
    static func referenceScores(fc1: [Float], fc2: [Float], d: Int, r: Int, f: Int, x: [Float]) -> [Float] {
        let h = (0..<r).map { i in max(0, (0..<d).reduce(0.0) { $0 + Double(fc1[i * d + $1]) * Double(x[$1]) }) }
        return (0..<f).map { i in Float((0..<r).reduce(0.0) { $0 + Double(fc2[i * r + $1]) * h[$1] }) }
    }

    static func rounded(_ x: [Float], _ type: TensorType) -> [Float] { PredictorTrainer.Model.rounded(x, type) }

    func temporaryPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("ember-\(name)-\(getpid()).gguf").path
    }

    func testEmberFileRoundTrip() throws {
        var rng = Rng(state: 3)
        let d = 48, f = 80, ranks = [16, 0, 24]
        for type in [TensorType.f32, .f16] {
            let fc1 = ranks.map { $0 == 0 ? nil : rng.floats($0 * d) }, fc2 = ranks.map { $0 == 0 ? nil : rng.floats(f * $0) }
            var metadata = PredictorSet.Metadata()
            metadata.sourceModel = "test-model"
            metadata.targetSparsity = 0.7
            metadata.targetRecall = 0.95
            metadata.recall = [0.96, 1, 0.95]
            metadata.precision = [0.5, 0, 0.6]
            metadata.predictedShare = [0.4, 1, 0.45]
            let set = PredictorSet(fc1: fc1, fc2: fc2, ranks: ranks, thresholds: [0.25, 0, -0.5], inputLength: d,
                                   neuronCount: f, type: type, metadata: metadata)
            let path = temporaryPath("predictor-\(type)")
            defer { try? FileManager.default.removeItem(atPath: path) }
            try set.write(to: path)
            let loaded = try PredictorSet(path: path)
            XCTAssertEqual(loaded.metadata, metadata)
            XCTAssertEqual(loaded.layers.map { $0?.rank ?? 0 }, ranks)
            XCTAssertEqual(loaded.layers.map { $0?.threshold }, [0.25, nil, -0.5])
            XCTAssertEqual(loaded.layers[0]?.fc1.type, type)
            let x = rng.floats(d)
            var scores = [Float](repeating: 0, count: f)
            for l in [0, 2] {
                let expected = Self.referenceScores(fc1: Self.rounded(fc1[l]!, type), fc2: Self.rounded(fc2[l]!, type),
                                                    d: d, r: ranks[l], f: f, x: x)
                loaded.scores(layer: l, input: x, into: &scores)
                for i in 0..<f { XCTAssertEqual(scores[i], expected[i], accuracy: 1e-4, "\(type) layer \(l) neuron \(i)") }
            }
            // A layer without a predictor keeps every neuron.
            var active = [Int32](repeating: -1, count: f)
            XCTAssertEqual(loaded.activeNeurons(layer: 1, input: x, into: &active), f)
        }
    }

    /// A file laid out as PowerInfer writes one: `PWRI` magic, fc1 [d, r] and fc2 [r, F] per
    /// layer, one global τ; F16, F32 and a quantized type.
    func testLoadsPowerInferFile() throws {
        var rng = Rng(state: 5)
        let d = 64, f = 96, r = 32
        let fc1 = [rng.floats(r * d), rng.floats(r * d)], fc2 = [rng.floats(f * r), rng.floats(f * r)]
        let types: [(TensorType, TensorType)] = [(.f16, .f32), (.q8_0, .f16)]
        var writer = GGUFWriter()
        writer.magic = Array("PWRI".utf8)
        writer.set("general.architecture", .string("llama"))
        writer.set("powerinfer.sparse_threshold", .float32(0.125))
        func bytes(_ x: [Float], _ type: TensorType, rows: Int, columns: Int) -> [UInt8] {
            let rowBytes = type.byteCount(elements: columns)!
            var out = [UInt8](repeating: 0, count: rows * rowBytes)
            out.withUnsafeMutableBytes { o in
                for row in 0..<rows {
                    x.withUnsafeBufferPointer { ember_quantize_row(Int32(type.rawValue), $0.baseAddress! + row * columns,
                                                                   o.baseAddress! + row * rowBytes, Int64(columns)) }
                }
            }
            return out
        }
        for l in 0..<2 {
            writer.addTensor("blk.\(l).fc1.weight", type: types[l].0, dims: [d, r], bytes: bytes(fc1[l], types[l].0, rows: r, columns: d))
            writer.addTensor("blk.\(l).fc2.weight", type: types[l].1, dims: [r, f], bytes: bytes(fc2[l], types[l].1, rows: f, columns: r))
        }
        let path = temporaryPath("powerinfer")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try writer.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.flavor, .powerInfer)
        let set = try PredictorSet(file: file)
        XCTAssertEqual(set.layers.count, 2)
        XCTAssertEqual(set.inputLength, d)
        XCTAssertEqual(set.neuronCount, f)
        let x = rng.floats(d)
        var scores = [Float](repeating: 0, count: f)
        for l in 0..<2 {
            XCTAssertEqual(set.layers[l]?.threshold, 0.125)
            XCTAssertEqual(set.layers[l]?.rank, r)
            // Dequantized weights are the reference; Q8_0 also rounds x to 8 bits (≲1 % here).
            let w1 = types[l].0 == .q8_0 ? dequantized(bytes(fc1[l], .q8_0, rows: r, columns: d), .q8_0, r * d) : Self.rounded(fc1[l], types[l].0)
            let expected = Self.referenceScores(fc1: w1, fc2: Self.rounded(fc2[l], types[l].1), d: d, r: r, f: f, x: x)
            set.scores(layer: l, input: x, into: &scores)
            let scale = expected.map { abs($0) }.max()!
            for i in 0..<f {
                XCTAssertEqual(scores[i], expected[i], accuracy: types[l].0 == .q8_0 ? 0.02 * scale : 1e-4, "layer \(l) neuron \(i)")
            }
            // The threaded path converts activations the same way, so it agrees exactly.
            var single = [Int32](repeating: -1, count: f), threaded = single
            let count = set.activeNeurons(layer: l, input: x, into: &single)
            let threadedCount = set.activeNeurons(layer: l, input: x, into: &threaded, pool: ThreadPool(threads: 2))
            XCTAssertEqual(Array(threaded.prefix(threadedCount)), Array(single.prefix(count)))
        }
    }

    func dequantized(_ bytes: [UInt8], _ type: TensorType, _ n: Int) -> [Float] {
        var out = [Float](repeating: 0, count: n)
        ember_dequantize_row(Int32(type.rawValue), bytes, &out, Int64(n))
        return out
    }

    func testActiveNeuronsMatchReference() throws {
        var rng = Rng(state: 9)
        let d = 40, f = 150, r = 24, tokens = 5
        let fc1 = rng.floats(r * d), fc2 = rng.floats(f * r)
        let set = PredictorSet(fc1: [fc1], fc2: [fc2], ranks: [r], thresholds: [0.3], inputLength: d, neuronCount: f, type: .f32)
        let inputs = Matrix(rows: tokens, length: d)
        let masks = Matrix(rows: tokens, length: f)
        var expectedTotal = 0
        var xs: [[Float]] = []
        for t in 0..<tokens {
            let x = rng.floats(d)
            xs.append(x)
            inputs.row(t).update(from: x, count: d)
        }
        let pool = ThreadPool(threads: 2)
        let total = set.activeMasks(layer: 0, inputs: inputs, count: tokens, into: masks, pool: pool)
        for (t, x) in xs.enumerated() {
            let reference = Self.referenceScores(fc1: fc1, fc2: fc2, d: d, r: r, f: f, x: x)
            var active = [Int32](repeating: -1, count: f)
            let count = set.activeNeurons(layer: 0, input: x, into: &active)
            let got = Array(active.prefix(count))
            // Neurons within float rounding of τ may go either way.
            let expected = (0..<f).filter { reference[$0] >= 0.3 }.map { Int32($0) }
            let unsure = Set((0..<f).filter { abs(reference[$0] - 0.3) < 1e-4 }.map { Int32($0) })
            XCTAssertEqual(Set(got).subtracting(unsure), Set(expected).subtracting(unsure), "token \(t)")
            XCTAssertEqual(got, got.sorted())
            var threaded = [Int32](repeating: -1, count: f)
            let threadedCount = set.activeNeurons(layer: 0, input: x, into: &threaded, pool: pool)
            XCTAssertEqual(Array(threaded.prefix(threadedCount)), got, "token \(t), threaded")
            XCTAssertGreaterThan(count, 0)
            XCTAssertLessThan(count, f)
            expectedTotal += count
            for i in 0..<f where !unsure.contains(Int32(i)) {
                XCTAssertEqual(masks.row(t)[i], reference[i] >= 0.3 ? 1 : 0, "token \(t) neuron \(i)")
            }
        }
        XCTAssertEqual(total, expectedTotal)
    }

    // MARK: end to end on SmolLM2

    /// Gate thresholds reaching `sparsity` on `tokens`, measured here because the profiler is
    /// not on main yet: per layer, the `sparsity` quantile of |act(gate)| over every
    /// `sampleEvery`-th token, and activation counts at it over those tokens.
    static func calibrate(session: Context, tokens: [Int32], context: Int, sparsities: [Float],
                          sampleEvery: Int = 4) throws -> ActivationStatistics {
        let config = session.model.config
        let f = config.feedForwardLength
        var magnitudes = [[Float]](repeating: [], count: config.layerCount)
        var seen = 0
        session.pass.feedForwardObserver = { o in
            for t in 0..<o.tokenCount where (seen + t) % sampleEvery == 0 {
                magnitudes[o.layer] += UnsafeBufferPointer(start: o.activated.row(t), count: f).map { abs($0) }
            }
            if o.layer == config.layerCount - 1 { seen += o.tokenCount }
        }
        defer { session.pass.feedForwardObserver = nil }
        for chunk in 0..<tokens.count / context {
            session.reset()
            try session.evaluate(Array(tokens[chunk * context..<(chunk + 1) * context]))
        }
        session.reset()
        let layers = magnitudes.map { m -> ActivationStatistics.Layer in
            let sorted = m.sorted()
            let thresholds = sparsities.map { sorted[min(sorted.count - 1, Int(Double($0) * Double(sorted.count)))] }
            let counts = thresholds.map { t -> [Float] in
                var c = [Float](repeating: 0, count: f)
                for (k, v) in m.enumerated() where v >= t { c[k % f] += 1 }
                return c
            }
            return ActivationStatistics.Layer(gateThresholds: thresholds, downThresholds: thresholds.map { _ in 0 }, counts: counts)
        }
        return ActivationStatistics(sourceModel: (try session.model.file.string("general.name")) ?? "", corpusSHA256: "", tokens: magnitudes[0].count / f,
                                    activation: config.activation.rawValue, gated: true, feedForwardLength: f,
                                    sparsityTargets: sparsities, layers: layers)
    }

    /// The fixtures' evaluation text, carried with the tests.
    static func evalTextPath() -> String {
        TestData.fixtures.appendingPathComponent("eval-gpl3.txt").path
    }

    func testEndToEndOnSmolLM2() throws {
        let model = try TestData.model(.smolLM2)
        let tokenizer = try Tokenizer(file: model.file)
        let text = try String(contentsOfFile: Self.evalTextPath(), encoding: .utf8)
        let tokens = Array(tokenizer.encode(text, addSpecial: false, parseSpecial: false).prefix(1024))
        let session = Context(model: model, threads: 2, contextLength: 128)
        let stats = try Self.calibrate(session: session, tokens: tokens, context: 128, sparsities: [0.5])
        let layers = [1, 20]
        let data = try PredictorTrainingData.collect(session: session, tokens: tokens, context: 128, layers: layers,
                                                     thresholds: stats.layers.map { $0.gateThresholds[0] }, relu: false)
        XCTAssertEqual(data.tokenCount, 1024)
        for l in layers { XCTAssertEqual(data.activeShare(layer: l, tokens: 0..<1024), 0.5, accuracy: 0.03) }
        var options = PredictorTrainingOptions()
        options.minRank = 32
        options.maxRank = 64
        options.maxAttempts = 2
        options.epochs = 8
        options.batchSize = 128
        let start = Date()
        let result = PredictorTrainer.train(data: data, layerCount: model.config.layerCount,
                                            hotShares: stats.layers.map { PredictorTrainer.hotShare(counts: $0.counts[0]) },
                                            options: options, pool: session.pool, targetSparsity: 0.5)
        print("end-to-end training: \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        XCTAssertEqual(result.reports.map(\.layer), layers)
        for report in result.reports {
            print(String(format: "layer %d rank %d recall %.3f precision %.3f predicted %.3f (active %.3f)",
                         report.layer, report.rank, report.recall, report.precision, report.predictedShare, report.activeShare))
            // τ is chosen on ~100 validation tokens for 0.95; the last ~150 tokens must keep most of it.
            XCTAssertGreaterThan(report.recall, 0.88)
            XCTAssertLessThan(report.predictedShare, 0.97)
            XCTAssertGreaterThan(report.precision, report.activeShare, "better than guessing")
        }
        // The trained set predicts, through the inference path, what the trainer measured.
        let set = result.predictors
        XCTAssertNil(set.layers[0])
        let l = layers[1]
        let x = Array(data.layers[l]!.inputs[1000 * 576..<1001 * 576])
        var active = [Int32](repeating: 0, count: 1536)
        let count = set.activeNeurons(layer: l, input: x, into: &active)
        XCTAssertGreaterThan(count, 0)
        XCTAssertLessThan(count, 1536)
    }
    /// Q8_0 predictors: ranks step by the quant block, the weights are stored quantized, and
    /// the inference path (which also quantizes its input to Q8_0) keeps the recall the trainer
    /// measured on held-out tokens with the stored weights.
    func testQ8_0PredictorsKeepTheirRecallThroughTheInferencePath() throws {
        let model = try TestData.model(.smolLM2)
        let tokenizer = try Tokenizer(file: model.file)
        let text = try String(contentsOfFile: Self.evalTextPath(), encoding: .utf8)
        let tokens = Array(tokenizer.encode(text, addSpecial: false, parseSpecial: false).prefix(1024))
        let session = Context(model: model, threads: 2, contextLength: 128)
        let stats = try Self.calibrate(session: session, tokens: tokens, context: 128, sparsities: [0.5])
        let l = 20
        let data = try PredictorTrainingData.collect(session: session, tokens: tokens, context: 128, layers: [l],
                                                     thresholds: stats.layers.map { $0.gateThresholds[0] }, relu: false)
        var options = PredictorTrainingOptions()
        options.weightType = .q8_0
        options.minRank = 40  // rounds up to 64: fc2's rows hold whole Q8_0 blocks
        options.maxRank = 64
        options.maxAttempts = 1
        options.epochs = 8
        options.batchSize = 128
        let result = PredictorTrainer.train(data: data, layerCount: model.config.layerCount,
                                            hotShares: stats.layers.map { PredictorTrainer.hotShare(counts: $0.counts[0]) },
                                            options: options, pool: session.pool, targetSparsity: 0.5)
        let report = try XCTUnwrap(result.reports.first)
        let layer = try XCTUnwrap(result.predictors.layers[l])
        XCTAssertEqual(report.rank, 64)
        XCTAssertEqual(layer.fc1.type, .q8_0)
        XCTAssertEqual(layer.fc2.type, .q8_0)
        // As the F16 end-to-end test: τ chosen for 0.95 on ~100 tokens, kept on ~150 others.
        XCTAssertGreaterThan(report.recall, 0.88)
        XCTAssertLessThan(report.predictedShare, 0.97)

        // The same held-out tokens through activeNeurons (Q8_0 activations, the dot kernels).
        let d = data.inputLength, f = data.neuronCount, words = data.wordsPerToken
        let labels = data.layers[l]!.labels
        var active = [Int32](repeating: 0, count: f)
        var truePositives = 0, positives = 0
        for t in (data.tokenCount - result.heldOutTokens)..<data.tokenCount {
            let x = Array(data.layers[l]!.inputs[t * d..<(t + 1) * d])
            let count = result.predictors.activeNeurons(layer: l, input: x, into: &active)
            let predicted = Set(active.prefix(count))
            for i in 0..<f where labels[t * words + i >> 6] >> (i & 63) & 1 == 1 {
                positives += 1
                if predicted.contains(Int32(i)) { truePositives += 1 }
            }
        }
        let recall = Float(truePositives) / Float(max(positives, 1))
        print(String(format: "Q8_0 predictor layer %d: trainer recall %.4f, inference path %.4f", l, report.recall, recall))
        // Rounding the input to Q8_0 moves scores by ~1e-3 relative: only neurons within that of τ flip.
        XCTAssertEqual(recall, report.recall, accuracy: 0.01)
    }
}
