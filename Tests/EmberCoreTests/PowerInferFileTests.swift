@testable import EmberCore
import Foundation
import XCTest

/// How Ember reads PowerInfer's file format itself: its neuron-major down in place, its
/// predictors, and damaged or foreign files (one typed error naming the file and the tensor).
final class PowerInferFileTests: XCTestCase {
    static let bamboo = PowerInferReferenceTests.folder.appendingPathComponent("bamboo.f16.powerinfer.gguf").path

    /// A fresh path in a directory removed when the test ends.
    func scratchPath(_ name: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-pwri-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        return directory.appendingPathComponent(name).path
    }

    /// `source` rewritten with `change` applied to a copy of everything it holds.
    func rewritten(_ source: String, _ change: (inout GGUFWriter, GGUFFile) throws -> Void) throws -> String {
        let file = try GGUFFile(path: source)
        var writer = GGUFWriter(copying: file)
        try change(&writer, file)
        let path = try scratchPath("changed.gguf")
        try writer.write(to: path)
        return path
    }

    /// The file's `ffn_down_t` is the sparse FFN's down, in place: no transposed copy (the
    /// sparse decoder reads the same bytes), and the dense path uses it too.
    func testNeuronMajorDownIsReadInPlace() throws {
        let model = try Model(path: Self.bamboo)
        let file = model.language.file
        for l in 0..<model.language.layerCount {
            let down = model.language.architecture.feedForward(l).down
            let matrix = try XCTUnwrap(down.neuronMajor, "layer \(l)")
            let info = try XCTUnwrap(file.tensorInfo("blk.\(l).ffn_down_t.weight"))
            XCTAssertEqual(matrix.weights.data, file.data(of: info), "layer \(l): the mapped tensor itself")
            XCTAssertEqual([matrix.rows, matrix.columns], [1024, 128])
        }
        let context = try PowerInferReferenceTests.context(model, sparsity: nil)
        let sparse = try XCTUnwrap(context.sparse)
        XCTAssertEqual(sparse.weightBytesPerToken(model.language) > 0, true)
        XCTAssertEqual(model.hasOwnPredictors, true)
        XCTAssertEqual(model.language.config.activation, .drelu)
    }

    func testMissingDownTIsNamed() throws {
        let path = try rewritten(Self.bamboo) { writer, _ in writer.remove(tensors: { $0 == "blk.2.ffn_down_t.weight" }) }
        XCTAssertThrowsError(try Model(path: path)) {
            XCTAssertEqual($0 as? GGUFError, .missingTensor(path: path, tensor: "blk.2.ffn_down_t.weight"))
            XCTAssertTrue("\($0.localizedDescription)".contains("blk.2.ffn_down_t.weight"))
        }
    }

    /// Predictors scoring another number of neurons than the model's layers have, or reading
    /// another hidden size: the file and the first tensor that does not fit.
    func testPredictorShapesDisagreeingWithTheModelAreNamed() throws {
        let file = try GGUFFile(path: Self.bamboo)
        let rank = try XCTUnwrap(file.tensorInfo("blk.0.fc1.weight")).dims[1]
        func zeros(_ count: Int) -> [UInt8] { [UInt8](repeating: 0, count: 2 * count) }
        // Every fc2 scoring 512 neurons (consistent among themselves, not with the model).
        let narrow = try rewritten(Self.bamboo) { writer, file in
            writer.remove(tensors: { $0.hasSuffix(".fc2.weight") })
            for l in 0..<4 { writer.addTensor("blk.\(l).fc2.weight", type: .f16, dims: [rank, 512], bytes: zeros(rank * 512)) }
        }
        XCTAssertThrowsError(try Model(path: narrow)) {
            XCTAssertEqual($0 as? GGUFError, .wrongTensorShape(path: narrow, tensor: "blk.0.fc2.weight", expected: [rank, 1024],
                                                              found: [rank, 512]))
        }
        // One fc1 reading 64 inputs where the model has 128.
        let wide = try rewritten(Self.bamboo) { writer, file in
            writer.remove(tensors: { $0 == "blk.3.fc1.weight" })
            writer.addTensor("blk.3.fc1.weight", type: .f16, dims: [64, rank], bytes: zeros(64 * rank))
        }
        XCTAssertThrowsError(try Model(path: wide)) {
            XCTAssertEqual($0 as? GGUFError, .wrongTensorShape(path: wide, tensor: "blk.3.fc1.weight", expected: [128, rank],
                                                              found: [64, rank]))
        }
        // A predictor for a fifth layer of a four-layer model.
        let extra = try rewritten(Self.bamboo) { writer, file in
            for name in ["fc1", "fc2"] {
                writer.addTensor(copying: try XCTUnwrap(file.tensorInfo("blk.0.\(name).weight")), of: file, as: "blk.4.\(name).weight")
            }
        }
        XCTAssertThrowsError(try Model(path: extra)) {
            XCTAssertEqual($0 as? SparsityError, .malformed(path: extra, detail: "tensor blk.4.fc1.weight is a predictor of layer 4, "
                                                             + "but the model has 4 layers"))
        }
    }

    func testUnknownArchitectureIsNamed() throws {
        let path = try rewritten(Self.bamboo) { writer, _ in writer.set("general.architecture", .string("mamba")) }
        XCTAssertThrowsError(try Model(path: path)) {
            guard case let .unsupportedArchitecture(p, architecture, supported)? = $0 as? ModelError else { return XCTFail("\($0)") }
            XCTAssertEqual(p, path)
            XCTAssertEqual(architecture, "mamba")
            XCTAssertTrue(["llama", "bamboo", "falcon", "opt"].allSatisfy(supported.contains), "\(supported)")
            XCTAssertTrue("\($0)".contains("\"general.architecture\""), "the message names the key: \($0)")
        }
    }

    /// The four bad inputs of PowerInfer's format through the command line: `ember run` ends
    /// with status 1 and one error line naming the file and the tensor (or, for the
    /// architecture, the name it does not know), never a crash or a partial run.
    func testBadPowerInferFilesEndTheCommandWithOneError() throws {
        let binary = TestData.packageRoot.appendingPathComponent(".build/release/ember").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            return XCTFail("\(binary) is missing: run `swift build -c release` first")
        }
        func run(_ model: String, _ extra: [String] = []) throws -> (status: Int32, reason: Process.TerminationReason, stderr: String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["run", "-m", model, "-p", "hi", "-n", "1", "-t", "1"] + extra
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let data = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, process.terminationReason, String(decoding: data, as: UTF8.self))
        }
        func expectOneError(_ model: String, _ extra: [String] = [], naming words: [String], _ what: String) throws {
            let outcome = try run(model, extra)
            XCTAssertEqual(outcome.reason, .exit, what)
            XCTAssertEqual(outcome.status, 1, "\(what): \(outcome.stderr)")
            let errors = outcome.stderr.split(separator: "\n").filter { $0.contains("error") }
            XCTAssertEqual(errors.count, 1, "\(what): \(outcome.stderr)")
            for word in words { XCTAssertTrue(errors.first?.contains(word) == true, "\(what): \(word) not in \(outcome.stderr)") }
        }

        let file = try GGUFFile(path: Self.bamboo)
        let rank = try XCTUnwrap(file.tensorInfo("blk.0.fc1.weight")).dims[1]
        let narrow = try rewritten(Self.bamboo) { writer, _ in
            writer.remove(tensors: { $0 == "blk.1.fc2.weight" })
            writer.addTensor("blk.1.fc2.weight", type: .f16, dims: [rank, 512], bytes: [UInt8](repeating: 0, count: 2 * rank * 512))
        }
        try expectOneError(narrow, naming: [narrow, "blk.1.fc2.weight"], "predictor shapes")
        let noDown = try rewritten(Self.bamboo) { writer, _ in writer.remove(tensors: { $0 == "blk.3.ffn_down_t.weight" }) }
        try expectOneError(noDown, naming: [noDown, "blk.3.ffn_down_t.weight"], "missing ffn_down_t")
        let unknown = try rewritten(Self.bamboo) { writer, _ in writer.set("general.architecture", .string("mamba")) }
        try expectOneError(unknown, naming: [unknown, "mamba"], "unknown architecture")

        // A placement PowerInfer made for another model (11008 neurons a layer, the model has
        // 1024) beside the file: read only for a hybrid run, which needs an OpenCL device.
        try TestData.requireOpenCL("PowerInfer's placement through the command line")
        let copy = try scratchPath("bamboo.powerinfer.gguf")
        try FileManager.default.copyItem(atPath: Self.bamboo, toPath: copy)
        try PowerInferReferenceTests.writePowerInferPlacement(to: copy + ".generated.gpuidx", layers: 4, neurons: 11008,
                                                               capacity: 1 << 20) { _ in [0, 1] }
        try expectOneError(copy, ["--vram-budget", "64MiB"], naming: [copy + ".generated.gpuidx", "blk.0.gpu_idx"], "gpuidx of another model")
    }

    /// The same tensors with the GGUF magic and no predictors: `ffn_down_t` is still read (there
    /// is no row-major down), and with nothing to predict the active neurons a session is dense.
    func testAPlainGGUFFileWithoutPredictorsRunsDense() throws {
        let plain = try rewritten(Self.bamboo) { writer, file in
            writer.magic = Array("GGUF".utf8)
            writer.remove(tensors: { $0.hasSuffix(".fc1.weight") || $0.hasSuffix(".fc2.weight") })
        }
        let model = try Model(path: plain)
        XCTAssertNotNil(model.language.architecture.feedForward(0).down.neuronMajor, "only ffn_down_t there: read it")
        XCTAssertFalse(model.hasOwnPredictors)
        let context = try PowerInferReferenceTests.context(model, sparsity: nil)
        XCTAssertNil(context.sparse, "no predictors: dense by default")
    }
}
