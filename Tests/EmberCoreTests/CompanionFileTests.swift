import CEmberKernels
import Foundation
import XCTest
@testable import EmberCore
import EmberDownload

/// The statistics, predictor and placement readers on crafted files: sizes within the shared
/// limits and overflow-checked, layer numbers from tensor names bounded, and no NaN or infinity
/// accepted where it would silently change what runs. Also the non-finite scans the model
/// loader and `--check-tensors` use.
final class CompanionFileTests: XCTestCase {
    func file(_ writer: GGUFWriter, _ name: String = "crafted.gguf") throws -> GGUFFile {
        try GGUFFile(file: try MappedFile(bytes: try writer.serialized(), path: name))
    }

    func expectLimit(_ limit: ReaderLimit, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard case .outOfRange(_, _, _, _, let found)? = error as? LimitError else {
                return XCTFail("expected the \(limit.name) limit, got \(error)", file: file, line: line)
            }
            XCTAssertEqual(found, limit, file: file, line: line)
        }
    }

    func expectNonFinite(_ tensor: String, at index: Int, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertEqual(error as? GGUFError, .nonFiniteValue(path: "crafted.gguf", tensor: tensor, index: index), file: file, line: line)
        }
    }

    func expectMalformed(_ fragment: String, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let detail: String
            switch error {
            case SparsityError.malformed(_, let d): detail = d
            case PlacementError.malformed(_, let d): detail = d
            default: return XCTFail("expected a malformed-file error, got \(error)", file: file, line: line)
            }
            XCTAssertTrue(detail.contains(fragment), detail, file: file, line: line)
        }
    }

    // MARK: statistics

    /// A statistics file of `layers` layers of 4 neurons and 2 targets, metadata overridable.
    func statistics(layers: Int = 2, gate: [Float] = [0.5, 1], counts: [Float] = [1, 2, 3, 4, 0, 1, 2, 3],
                    targets: [Float] = [0.5, 0.8], override: [(String, GGUFValue)] = []) -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("ember.stats"))
        w.set("ember.stats.tokens", .uint64(10))
        w.set("ember.stats.activation", .string("silu"))
        w.set("ember.stats.feed_forward_length", .uint32(4))
        w.set("ember.stats.layer_count", .uint32(UInt32(layers)))
        w.set("ember.stats.sparsity_targets", .array(.float32, targets.map { .float32($0) }))
        for (k, v) in override { w.set(k, v) }
        for l in 0..<layers {
            w.addTensor("blk.\(l).gate_thresholds", dims: [gate.count], floats: gate)
            w.addTensor("blk.\(l).down_thresholds", dims: [2], floats: [0.25, 0.5])
            w.addTensor("blk.\(l).activation_counts", dims: [4, counts.count / 4], floats: counts)
        }
        return w
    }

    func testStatisticsReadWhenSound() throws {
        let read = try ActivationStatistics(file: try file(statistics()))
        XCTAssertEqual(read.layers.count, 2)
        XCTAssertEqual(read.layers[1].counts, [[1, 2, 3, 4], [0, 1, 2, 3]])
    }

    func testStatisticsSizesAreBoundedAndOverflowChecked() throws {
        // f × t once overflowed (trapping) before any tensor was looked at.
        expectLimit(ReaderLimits.feedForwardLength) {
            _ = try ActivationStatistics(file: try file(statistics(override: [("ember.stats.feed_forward_length", .uint64(1 << 62))])))
        }
        expectLimit(ReaderLimits.layers) {
            _ = try ActivationStatistics(file: try file(statistics(override: [("ember.stats.layer_count", .uint32(5000))])))
        }
        expectLimit(ReaderLimits.layers) {
            _ = try ActivationStatistics(file: try file(statistics(override: [("ember.stats.layer_count", .uint64(.max))])))
        }
        expectLimit(ReaderLimits.sparsityTargets) {
            _ = try ActivationStatistics(file: try file(statistics(targets: [])))
        }
        expectMalformed("negative") {
            _ = try ActivationStatistics(file: try file(statistics(override: [("ember.stats.tokens", .int64(-5))])))
        }
        expectMalformed("expected relu, silu or gelu") {
            _ = try ActivationStatistics(file: try file(statistics(override: [("ember.stats.activation", .string("\u{1B}[31mswish"))])))
        }
    }

    func testStatisticsRejectNonFiniteValues() throws {
        expectNonFinite("blk.0.gate_thresholds", at: 1) { _ = try ActivationStatistics(file: try file(statistics(gate: [0.5, .nan]))) }
        expectNonFinite("blk.0.gate_thresholds", at: 0) { _ = try ActivationStatistics(file: try file(statistics(gate: [.infinity, 1]))) }
        expectNonFinite("blk.0.activation_counts", at: 5) {
            _ = try ActivationStatistics(file: try file(statistics(counts: [1, 2, 3, 4, 0, .nan, 2, 3])))
        }
        expectMalformed("negative count") {
            _ = try ActivationStatistics(file: try file(statistics(counts: [1, 2, 3, 4, 0, -1, 2, 3])))
        }
        expectMalformed("sparsity_targets") { _ = try ActivationStatistics(file: try file(statistics(targets: [0.5, .nan]))) }
    }

    // MARK: predictors

    /// Ember predictor file: `layers` layers of fc1 [8, 4] and fc2 [4, 16] F32.
    func predictors(layers: Int = 2, fc1: [Float]? = nil, thresholds: [Float]? = nil, extraTensors: [String] = [],
                    override: [(String, GGUFValue)] = []) -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("ember.predictor"))
        w.set("ember.predictor.layer_count", .uint32(UInt32(layers)))
        w.set("ember.predictor.thresholds", .array(.float32, (thresholds ?? [Float](repeating: 0.5, count: layers)).map { .float32($0) }))
        for (k, v) in override { w.set(k, v) }
        for l in 0..<layers {
            w.addTensor("blk.\(l).fc1.weight", dims: [8, 4], floats: fc1 ?? (0..<32).map { Float($0) / 32 })
            w.addTensor("blk.\(l).fc2.weight", dims: [4, 16], floats: (0..<64).map { Float($0) / 64 })
        }
        for name in extraTensors { w.addTensor(name, dims: [1], floats: [0]) }
        return w
    }

    func testPredictorsReadWhenSound() throws {
        let set = try PredictorSet(file: try file(predictors()))
        XCTAssertEqual(set.layers.count, 2)
        XCTAssertEqual(set.layers[1]?.rank, 4)
        XCTAssertEqual(set.neuronCount, 16)
    }

    func testPredictorLayerNumbersAndSizesAreBounded() throws {
        // A layer number in a tensor name once sized the threshold array (terabytes).
        for name in ["blk.999999999999.fc1.weight", "blk.1024.fc1.weight", "blk.-1.fc2.weight"] {
            expectLimit(ReaderLimits.layers) { _ = try PredictorSet(file: try file(predictors(extraTensors: [name]))) }
        }
        expectLimit(ReaderLimits.layers) {
            _ = try PredictorSet(file: try file(predictors(override: [("ember.predictor.layer_count", .uint64(1 << 40))])))
        }
        // PowerInfer files take the layer count from the model's block_count.
        var powerInfer = predictors()
        powerInfer.set("general.architecture", .string("llama"))
        powerInfer.set("llama.block_count", .uint32(2_000_000))
        expectLimit(ReaderLimits.layers) { _ = try PredictorSet(file: try file(powerInfer)) }

        // A rank past the limit (fc1 [32, 65537] Q4_0, fc2 [65537, 1] F16).
        var rank = GGUFWriter()
        rank.set("general.architecture", .string("ember.predictor"))
        rank.set("ember.predictor.layer_count", .uint32(1))
        rank.set("ember.predictor.thresholds", .array(.float32, [.float32(0)]))
        let r = ReaderLimits.predictorRank.range.upperBound + 1
        rank.addTensor("blk.0.fc1.weight", type: .q4_0, dims: [32, r], bytes: [UInt8](repeating: 0, count: 18 * r))
        rank.addTensor("blk.0.fc2.weight", type: .f16, dims: [r, 1], bytes: [UInt8](repeating: 0, count: 2 * r))
        expectLimit(ReaderLimits.predictorRank) { _ = try PredictorSet(file: try file(rank)) }
    }

    func testPredictorsRejectNonFiniteValues() throws {
        var weights = (0..<32).map { Float($0) / 32 }
        weights[17] = .nan
        expectNonFinite("blk.0.fc1.weight", at: 17) { _ = try PredictorSet(file: try file(predictors(fc1: weights))) }
        weights[17] = -.infinity
        expectNonFinite("blk.0.fc1.weight", at: 17) { _ = try PredictorSet(file: try file(predictors(fc1: weights))) }
        expectMalformed("thresholds holds nan for layer 1") {
            _ = try PredictorSet(file: try file(predictors(thresholds: [0.5, .nan])))
        }
        var powerInfer = predictors()
        powerInfer.set("general.architecture", .string("llama"))
        powerInfer.set("powerinfer.sparse_threshold", .float32(.infinity))
        expectMalformed("sparse_threshold") { _ = try PredictorSet(file: try file(powerInfer)) }

        // A quantized predictor whose block scale is NaN: found through the dequantizer.
        var quantized = GGUFWriter()
        quantized.set("general.architecture", .string("ember.predictor"))
        quantized.set("ember.predictor.layer_count", .uint32(1))
        quantized.set("ember.predictor.thresholds", .array(.float32, [.float32(0)]))
        var blocks = [UInt8](repeating: 1, count: 34 * 2)  // two Q8_0 blocks: fc1 [32, 2]
        blocks[34] = 0x00; blocks[35] = 0x7E  // the second block's f16 scale: NaN
        quantized.addTensor("blk.0.fc1.weight", type: .q8_0, dims: [32, 2], bytes: blocks)
        quantized.addTensor("blk.0.fc2.weight", dims: [2, 4], floats: [Float](repeating: 1, count: 8))
        expectNonFinite("blk.0.fc1.weight", at: 32) { _ = try PredictorSet(file: try file(quantized)) }
    }

    // MARK: placements

    func placement(f: Int = 4, override: [(String, GGUFValue)] = []) -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("generic.gpu_index"))
        w.set("split.vram_capacity", .uint64(1000))
        for (k, v) in override { w.set(k, v) }
        let flags = [Int32](repeating: 0, count: f)
        w.addTensor("blk.0.gpu_idx", type: .i32, dims: [f], bytes: flags.withUnsafeBytes { Array($0) })
        return w
    }

    func testPlacementSizesAndNumbersAreChecked() throws {
        XCTAssertEqual(try Placement(file: try file(placement())).feedForwardLength, 4)
        expectLimit(ReaderLimits.feedForwardLength) {
            _ = try Placement(file: try file(placement(f: ReaderLimits.feedForwardLength.range.upperBound + 1)))
        }
        expectMalformed("outside the limit on layers") {
            _ = try Placement(file: try file(placement(override: [("ember.placement.layer_count", .uint32(100_000))])))
        }
        expectMalformed("sparsity_target is nan") {
            _ = try Placement(file: try file(placement(override: [("ember.placement.sparsity_target", .float32(.nan))])))
        }
        expectMalformed("expected_device_share is inf") {
            _ = try Placement(file: try file(placement(override: [("ember.placement.expected_device_share", .float64(.infinity))])))
        }
        expectMalformed("unknown dense block \"\\e[2J") {
            _ = try Placement(file: try file(placement(override: [("ember.placement.dense_blocks", .array(.string, [.string("\u{1B}[2J")]))])))
        }
    }

    // MARK: non-finite scans

    func testFirstNonFiniteFindsTheFirstBadValueAnywhere() {
        XCTAssertNil(FiniteValues.firstNonFinite([Float]()))
        let finite: [Float] = [0, -0.0, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, 1e-40, 1]
        XCTAssertNil(FiniteValues.firstNonFinite(finite))
        for count in [1, 5, 1023, 1024, 1025, 3000] {
            for position in Set([0, count / 2, count - 1]) {
                for bad in [Float.nan, .infinity, -.infinity, Float(bitPattern: 0x7FC0_1234), Float(bitPattern: 0xFF80_0001)] {
                    var values = [Float](repeating: 1, count: count)
                    values[position] = bad
                    if position + 1 < count { values[count - 1] = .nan }  // a later one must not win
                    XCTAssertEqual(FiniteValues.firstNonFinite(values), position, "\(count) \(position) \(bad)")
                }
            }
        }
    }

    func testCheckTensorValuesFindsNaNInEveryComputableType() throws {
        let good = GGUFWriter()
        XCTAssertNoThrow(try file(good).checkTensorValues())
        func quantized(_ type: TensorType, _ values: [Float]) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: type.byteCount(elements: values.count)!)
            out.withUnsafeMutableBytes { ember_quantize_row(Int32(type.rawValue), values, $0.baseAddress!, Int64(values.count)) }
            return out
        }
        let clean = (0..<512).map { Float($0 % 7) - 3 }
        for type in TensorType.allCases where ember_block_size(Int32(type.rawValue)) > 0 {
            var w = GGUFWriter()
            w.addTensor("clean", type: type, dims: [256, 2], bytes: quantized(type, clean))
            let cleanFile = try file(w)
            XCTAssertNoThrow(try cleanFile.checkTensorValues(), "\(type)")
            XCTAssertNil(cleanFile.firstNonFiniteElement(of: cleanFile.tensors[0]), "\(type)")

            // A NaN in the second row: as a float for float types, as the block scale otherwise.
            var bytes = quantized(type, clean)
            let rowBytes = bytes.count / 2
            switch type {
            case .f32: bytes.replaceSubrange(rowBytes + 12..<rowBytes + 16, with: [0, 0, 0xC0, 0x7F])
            case .f16: bytes.replaceSubrange(rowBytes + 6..<rowBytes + 8, with: [0x00, 0x7E])
            case .bf16: bytes.replaceSubrange(rowBytes + 6..<rowBytes + 8, with: [0xC0, 0x7F])
            case .q6_K:  // its f16 scale is the last two bytes of the block
                bytes.replaceSubrange(2 * rowBytes - 2..<2 * rowBytes, with: [0x00, 0x7E])
            default:  // the other block formats start with their f16 scale (Q8_K: an f32)
                if type == .q8_K { bytes.replaceSubrange(rowBytes..<rowBytes + 4, with: [0, 0, 0xC0, 0x7F]) }
                else { bytes.replaceSubrange(rowBytes..<rowBytes + 2, with: [0x00, 0x7E]) }
            }
            var bad = GGUFWriter()
            bad.addTensor("fine", dims: [4], floats: [1, 2, 3, 4])
            bad.addTensor("broken", type: type, dims: [256, 2], bytes: bytes)
            let badFile = try file(bad)
            XCTAssertThrowsError(try badFile.checkTensorValues(), "\(type)") { error in
                guard case .nonFiniteValue(_, let tensor, let index)? = error as? GGUFError else { return XCTFail("\(type): \(error)") }
                XCTAssertEqual(tensor, "broken", "\(type)")
                XCTAssertTrue((256..<512).contains(index), "\(type): \(index)")
                if [.f32, .f16, .bf16].contains(type) { XCTAssertEqual(index, 259, "\(type)") }
            }
        }
    }

    func testPublicScanOfAFileOnDisk() throws {
        var w = GGUFWriter()
        w.addTensor("fine", dims: [2], floats: [1, 2])
        w.addTensor("output_norm.weight", dims: [4], floats: [1, .nan, 1, 1])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ember-scan-\(UUID().uuidString).gguf").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try w.write(to: path)
        XCTAssertThrowsError(try TensorValueCheck.scan(path: path)) { error in
            XCTAssertEqual(error as? GGUFError, .nonFiniteValue(path: path, tensor: "output_norm.weight", index: 1))
            XCTAssertTrue("\(error)".contains("\"output_norm.weight\" holds a NaN or infinite value (element 1)"), "\(error)")
        }
    }

    func testRealModelsHaveFiniteWeights() throws {
        for model in [KnownModel.smolLM2, .gemma3] {
            var progress: [Int] = []
            let f = try GGUFFile(path: try TestData.modelPath(model))
            XCTAssertNoThrow(try f.checkTensorValues { done, _ in progress.append(done) }, model.name)
            XCTAssertEqual(progress.count, f.tensors.count)
            XCTAssertEqual(progress.last, f.tensors.reduce(0) { $0 + $1.byteCount })
        }
    }
}
