@testable import EmberCore
import Foundation
import XCTest

/// Writing PowerInfer's format (`ember convert --to powerinfer`), and the synthetic models of
/// each family it is tried on.
final class PowerInferExportTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-export-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// The tensor's bytes.
    static func bytes(_ file: GGUFFile, _ name: String) throws -> [UInt8] {
        let info = try XCTUnwrap(file.tensorInfo(name), name)
        return Array(UnsafeRawBufferPointer(start: file.data(of: info), count: info.byteCount))
    }

    /// PowerInfer's converter made opt-tiny's PWRI file from the same checkpoint as its dense
    /// file. Converting the dense file with those predictors gives PowerInfer's file again,
    /// tensor for tensor, byte for byte: the F16 transpose of `ffn_down` is exact, biases move
    /// to `ffn_down_t.bias`, the predictors and their threshold are carried over.
    func testConvertingOPTsDenseFileGivesPowerInfersOwn() throws {
        let folder = TestData.fixtures.appendingPathComponent("opt-tiny")
        let theirsPath = folder.appendingPathComponent("opt-tiny.f16.powerinfer.gguf").path
        let report = try PowerInferExport.write(model: folder.appendingPathComponent("opt-tiny.f16.gguf").path,
                                                predictor: theirsPath, to: path("opt.gguf"), threads: 2)
        XCTAssertEqual(report.threshold, 0.5)
        XCTAssertFalse(report.scaledPredictors)
        XCTAssertEqual(report.downType, .f16)
        XCTAssertEqual(report.notes, [])
        let ours = try GGUFFile(path: path("opt.gguf")), theirs = try GGUFFile(path: theirsPath)
        XCTAssertEqual(ours.flavor, .powerInfer)
        XCTAssertEqual(Set(ours.tensors.map(\.name)), Set(theirs.tensors.map(\.name)))
        for info in theirs.tensors {
            let mine = try XCTUnwrap(ours.tensorInfo(info.name))
            XCTAssertEqual([mine.dims, [Int(mine.type.rawValue)]], [info.dims, [Int(info.type.rawValue)]], info.name)
            XCTAssertEqual(try Self.bytes(ours, info.name), try Self.bytes(theirs, info.name), info.name)
        }
        XCTAssertEqual(try ours.float("powerinfer.sparse_threshold"), 0.5)
        // Predictors follow every other tensor, as PowerInfer's llama converter writes them.
        let names = ours.tensors.map(\.name)
        XCTAssertTrue(names.suffix(4).allSatisfy { $0.hasSuffix(".fc1.weight") || $0.hasSuffix(".fc2.weight") }, "\(names)")
    }

    func synth(_ family: SyntheticModel.Family, type: TensorType = .f16) throws -> (model: String, predictor: String) {
        let tokenizer = try GGUFFile(path: try TestData.modelPath(.smolLM2))
        let options = SyntheticModel.Options(shape: try XCTUnwrap(SyntheticModel.Shape.named("tiny", family: family)), sparsity: 0.9,
                                             type: type, seed: 3, family: family)
        // Not MODEL.predictor.gguf: the predictors are given, never found beside the model.
        let model = path("\(family).gguf"), predictor = path("\(family).margin.gguf")
        try SyntheticModel.write(options, tokenizer: tokenizer, to: model, pool: ThreadPool(threads: 2))
        try SyntheticModel.marginPredictors(options).write(to: predictor)
        return (model, predictor)
    }

    /// Each family's synthetic model and its PowerInfer-format copy compute the same thing:
    /// with the predictors (given beside the first, inside the second) the same neurons, 30 %
    /// of each layer (the margin predictors keep the hottest share whatever the token), and
    /// logits within 1 % of the row's rms. The copy's down is the F16 transpose (exact); what
    /// differs is the arithmetic: the first file's sparse decoder reads a Q8_0 transposed copy
    /// of down (at most half a step of 1/127 of a block's largest weight) where the copy reads
    /// its F16 rows; measured 0.1-0.3 % of the rms. A wrong transpose or a lost bias moves
    /// logits by about their rms.
    func testEachFamilyConvertsAndComputesTheSame() throws {
        for family in SyntheticModel.Family.allCases {
            let (source, predictor) = try synth(family)
            let output = path("\(family).powerinfer.gguf")
            let report = try PowerInferExport.write(model: source, predictor: predictor, to: output, threads: 2)
            XCTAssertEqual(report.threshold, 0, "\(family)")
            let converted = try Model(path: output)
            XCTAssertEqual(converted.language.file.flavor, .powerInfer)
            XCTAssertTrue(converted.hasOwnPredictors)
            XCTAssertFalse(converted.language.file.hasTensor("blk.0.ffn_down.weight"))
            XCTAssertEqual(converted.language.file.tensorInfo("blk.0.ffn_down_t.weight")?.dims,
                           [converted.language.config.embeddingLength, converted.language.config.feedForwardLength])
            let original = try Model(path: source)

            var options = SessionOptions()
            options.threads = 2
            options.contextLength = 64
            options.predictorPath = predictor
            options.sparsity = .predictor
            var first = SessionAssembly(model: original, options: options)
            let a = try first.makeContext()
            var second = SessionAssembly(model: converted, options: SessionOptions())
            let b = try second.makeContext()
            XCTAssertEqual(b.sparse?.mode, .predictor, "the copy runs its own predictors by default")
            let counterA = ActiveNeuronCounter(a.sparse!), counterB = ActiveNeuronCounter(b.sparse!)
            a.pass.sparsity = counterA
            b.pass.sparsity = counterB
            let f = original.language.config.feedForwardLength
            var worst: Float = 0
            for token: Int32 in [504, 265, 512, 269, 272, 282, 426, 98] {
                counterA.counts = []
                counterB.counts = []
                let x = try a.evaluate([token]), y = try b.evaluate([token])
                let rms = (x.map { $0 * $0 }.reduce(0, +) / Float(x.count)).squareRoot()
                worst = max(worst, zip(x, y).map { abs($0 - $1) }.max()! / rms)
                XCTAssertEqual(counterA.counts, counterB.counts, "\(family)")
                XCTAssertEqual(counterA.counts, [Int](repeating: Int((0.3 * Double(f)).rounded()), count: counterA.counts.count))
            }
            print("\(family): max |Δlogit| / rms between the source and its PowerInfer-format copy \(worst)")
            XCTAssertLessThan(worst, 0.01, "\(family)")
        }
    }

    /// PowerInfer has one threshold: the layers' own when equal, else ±1 with fc2 scaled.
    func testThresholdsFoldIntoOne() throws {
        XCTAssertEqual(try PowerInferExport.foldThresholds([0.5, 0.5], path: "p").threshold, 0.5)
        let positive = try PowerInferExport.foldThresholds([2, 0.5], path: "p")
        XCTAssertEqual(positive.threshold, 1)
        XCTAssertEqual(positive.scales, [0.5, 2])
        let negative = try PowerInferExport.foldThresholds([-2, -0.25], path: "p")
        XCTAssertEqual(negative.threshold, -1)
        XCTAssertEqual(negative.scales, [0.5, 4])
        for mixed: [Float] in [[-1, 1], [0, 1], [0, -2]] {
            XCTAssertThrowsError(try PowerInferExport.foldThresholds(mixed, path: "p")) {
                XCTAssertEqual($0 as? PowerInferExport.ExportError, .thresholdSigns(path: "p", thresholds: mixed))
            }
        }
    }

    /// Predictors trained by Ember have one threshold per layer; after folding, the copy keeps
    /// the same neurons for the same inputs (scores away from the threshold by more than the
    /// rounding of the scaled F16 weights, 2^-11 relative).
    func testFoldedThresholdsKeepTheSameNeurons() throws {
        let (source, margin) = try synth(.llama)
        let model = try Model(path: source)
        let c = model.language.config
        // The margin predictors with thresholds -1, -2, -3, -4: still far from every score.
        let set = try PredictorSet(path: margin)
        var fc1: [[Float]?] = [], fc2: [[Float]?] = []
        for layer in set.layers {
            let p = try XCTUnwrap(layer)
            var w1 = [Float](repeating: 0, count: p.fc1.rows * p.fc1.columns), w2 = [Float](repeating: 0, count: p.fc2.rows * p.fc2.columns)
            for r in 0..<p.fc1.rows { w1.withUnsafeMutableBufferPointer { p.fc1.dequantizeRow(r, into: $0.baseAddress! + r * p.fc1.columns) } }
            for r in 0..<p.fc2.rows { w2.withUnsafeMutableBufferPointer { p.fc2.dequantizeRow(r, into: $0.baseAddress! + r * p.fc2.columns) } }
            fc1.append(w1)
            fc2.append(w2)
        }
        let thresholds: [Float] = (0..<c.layerCount).map { -Float($0 + 1) }
        let varied = PredictorSet(fc1: fc1, fc2: fc2, ranks: set.layers.map { $0!.rank }, thresholds: thresholds,
                                  inputLength: c.embeddingLength, neuronCount: c.feedForwardLength)
        try varied.write(to: path("varied.gguf"))
        let report = try PowerInferExport.write(model: source, predictor: path("varied.gguf"), to: path("out.gguf"), threads: 2)
        XCTAssertEqual(report.threshold, -1)
        XCTAssertTrue(report.scaledPredictors)
        let folded = try PredictorSet(path: path("out.gguf"))
        XCTAssertEqual(folded.layers.map { $0!.threshold }, [Float](repeating: -1, count: c.layerCount))
        var random = SplitMix64(seed: 5)
        let x = (0..<c.embeddingLength).map { _ in Float.random(in: -2...2, using: &random) }
        var ids1 = [Int32](repeating: 0, count: c.feedForwardLength), ids2 = ids1
        for l in 0..<c.layerCount {
            let n1 = varied.activeNeurons(layer: l, input: x, into: &ids1)
            let n2 = folded.activeNeurons(layer: l, input: x, into: &ids2)
            XCTAssertEqual(Array(ids1.prefix(n1)), Array(ids2.prefix(n2)), "layer \(l)")
        }
    }

    func testFilesPowerInferCannotTakeAreRefused() throws {
        // An architecture without a sparse path in PowerInfer.
        let qwen = TestData.fixtures.appendingPathComponent("qwen3-tiny/model.gguf").path
        XCTAssertThrowsError(try PowerInferExport.write(model: qwen, predictor: nil, to: path("q.gguf"), threads: 1)) {
            XCTAssertEqual($0 as? PowerInferExport.ExportError, .unsupportedArchitecture(path: qwen, architecture: "qwen3"))
        }
        // No predictors anywhere.
        let (source, _) = try synth(.falcon)
        XCTAssertThrowsError(try PowerInferExport.write(model: source, predictor: nil, to: path("f.gguf"), threads: 1)) {
            XCTAssertEqual($0 as? PowerInferExport.ExportError,
                           .noPredictors(path: source, looked: CompanionFile.predictor.path(besideModel: source)))
        }
        // The output would replace the input.
        XCTAssertThrowsError(try PowerInferExport.write(model: source, predictor: nil, to: source, threads: 1)) {
            XCTAssertEqual($0 as? PowerInferExport.ExportError, .sameFile(path: source))
        }
        // An output path that cannot be written fails before the work, leaving nothing behind.
        XCTAssertThrowsError(try PowerInferExport.write(model: source, predictor: nil, to: directory.path, threads: 1)) {
            guard case .notARegularFile? = $0 as? OutputFileError else { return XCTFail("\($0)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("f.gguf")))
    }
}
