import CEmberKernels
import Foundation

/// Writes a model in PowerInfer's file format, so PowerInfer runs what Ember makes (DESIGN.md
/// section 4; Tests/EmberCoreTests/Fixtures/powerinfer/README.md):
/// - the first four bytes `PWRI`, the rest GGUF v3, every metadata key of the source kept;
/// - each layer's down projection neuron-major, `blk.N.ffn_down_t` (row i = neuron i's output
///   vector), in the source's type when PowerInfer's sparse kernels take it (F16, Q4_0), else
///   F16; its bias, if any, as `blk.N.ffn_down_t.bias`;
/// - the predictors as `blk.N.fc1.weight` [d, r] and `blk.N.fc2.weight` [r, F] after all other
///   tensors, and their threshold as `powerinfer.sparse_threshold`.
///
/// PowerInfer has one threshold for all layers, Ember's predictors one per layer. Scores are
/// compared with τ, so scaling a layer's fc2 by 1/|τ_l| turns "score ≥ τ_l" into "score' ≥ ±1"
/// exactly when every τ_l has the same sign (up to the rounding of the scaled weights); mixed
/// signs cannot be written.
public enum PowerInferExport {
    /// The architectures PowerInfer runs sparsely.
    public static let architectures = ["llama", "bamboo", "falcon", "opt"]
    /// Down projection types PowerInfer's sparse kernels compute (others give garbage: its issue #196).
    static let powerInferTypes: Set<TensorType> = [.f16, .q4_0]

    public enum ExportError: Error, Equatable, LocalizedError, CustomStringConvertible {
        case unsupportedArchitecture(path: String, architecture: String)
        case noPredictors(path: String, looked: String)
        case missingPredictor(path: String, layer: Int)
        case thresholdSigns(path: String, thresholds: [Float])
        case sameFile(path: String)

        public var description: String {
            switch self {
            case .unsupportedArchitecture(let path, let architecture):
                return "\(path): PowerInfer has no sparse path for architecture \(SafeText.quoted(architecture)) "
                    + "(it has \(PowerInferExport.architectures.joined(separator: ", ")))"
            case .noPredictors(let path, let looked):
                return "\(path) has no predictors and there are none at \(looked): PowerInfer's format needs them "
                    + "(give --predictor PRED.gguf, from `ember train-predictor`)"
            case .missingPredictor(let path, let layer):
                return "\(path) has no predictor for layer \(layer) (tensor blk.\(layer).fc1.weight): PowerInfer needs one per layer"
            case .thresholdSigns(let path, let thresholds):
                return "\(path): the layers' thresholds \(thresholds) have different signs (or some are 0): PowerInfer's one "
                    + "threshold cannot express them"
            case .sameFile(let path):
                return "\(path): the output would replace the model it is made from; choose another path"
            }
        }

        public var errorDescription: String? { description }
    }

    /// What was written.
    public struct Report: Sendable, Equatable {
        public var architecture: String
        /// The predictors' file (the model itself when it carries them).
        public var predictorPath: String
        public var threshold: Float
        /// Whether fc2 was scaled per layer to fold the layers' thresholds into one.
        public var scaledPredictors: Bool
        public var downType: TensorType
        /// What PowerInfer will not compute correctly in this file, if anything.
        public var notes: [String]
    }

    /// Writes `modelPath` (any file Ember reads of a PowerInfer architecture) in PowerInfer's
    /// format to `outputPath`, with the predictors of `predictorPath` (nil: the model's own, else
    /// `MODEL.predictor.gguf` beside it). The output path is checked before any work; the file
    /// appears whole or not at all. `progress(bytesDone, bytes)` follows the writing.
    public static func write(model modelPath: String, predictor predictorPath: String? = nil, to outputPath: String,
                             threads: Int, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Report {
        try AtomicFileWriter.prepare(outputPath)
        if let a = try? FileManager.default.attributesOfItem(atPath: modelPath), let b = try? FileManager.default.attributesOfItem(atPath: outputPath),
           a[.systemFileNumber] as? Int == b[.systemFileNumber] as? Int, a[.deviceIdentifier] as? Int == b[.deviceIdentifier] as? Int {
            throw ExportError.sameFile(path: outputPath)
        }
        let model = try Model(path: modelPath)
        let language = model.language, file = language.file, c = language.config
        guard architectures.contains(c.architecture) else {
            throw ExportError.unsupportedArchitecture(path: modelPath, architecture: c.architecture)
        }
        let predictorPath = predictorPath ?? (model.hasOwnPredictors ? modelPath : CompanionFile.predictor.path(besideModel: modelPath))
        guard FileManager.default.fileExists(atPath: predictorPath) else {
            throw ExportError.noPredictors(path: modelPath, looked: predictorPath)
        }
        let predictors = predictorPath == modelPath ? try PredictorSet(file: file) : try PredictorSet(path: predictorPath)
        try predictors.check(against: c, path: predictorPath)
        let layers = try (0..<c.layerCount).map { l in
            guard l < predictors.layers.count, let layer = predictors.layers[l] else {
                throw ExportError.missingPredictor(path: predictorPath, layer: l)
            }
            return layer
        }
        let (threshold, scales) = try foldThresholds(layers.map(\.threshold), path: predictorPath)

        var writer = GGUFWriter()
        writer.magic = Array("PWRI".utf8)
        writer.version = 3
        for key in file.metadataKeys where !key.hasPrefix("ember.predictor.") && key != "powerinfer.sparse_threshold" {
            if let value = file.value(key) { writer.set(key, value) }
        }
        writer.set("powerinfer.sparse_threshold", .float32(threshold))

        let pool = ThreadPool(threads: threads)
        var downType: TensorType = .f16
        var notes: [String] = []
        if scales.contains(where: { $0 != 1 }) {
            notes.append("the layers' thresholds differ: each layer's fc2 is scaled by 1/|τ_l| so that PowerInfer's one threshold, "
                         + "\(threshold), keeps the same neurons (up to the rounding of the scaled weights)")
        }
        for info in file.tensors where !(info.name.hasSuffix(".fc1.weight") || info.name.hasSuffix(".fc2.weight")) {
            let parts = info.name.split(separator: ".")
            guard parts.count == 4, parts[0] == "blk", let l = Int(parts[1]), parts[2] == "ffn_down" else {
                writer.addTensor(copying: info, of: file)
                continue
            }
            if parts[3] == "bias" {
                writer.addTensor(copying: info, of: file, as: "blk.\(l).ffn_down_t.bias")
                continue
            }
            // Row-major down (d rows of F): its transpose, computed when written.
            let down = language.architecture.feedForward(l).down.weight
            let type = powerInferTypes.contains(down.type) && c.embeddingLength % down.type.blockSize == 0 ? down.type : .f16
            downType = type
            writer.addTensor("blk.\(l).ffn_down_t.weight", type: type, dims: [down.rows, down.columns]) { buffer in
                let transposed = try NeuronMajorMatrix(transposing: down, as: type, pool: pool)
                buffer.copyMemory(from: UnsafeRawBufferPointer(start: transposed.weights.data, count: transposed.weights.byteCount))
            }
        }
        if let already = language.architecture.feedForward(0).down.neuronMajor { downType = already.type }
        var foreign = Set<String>()
        for l in 0..<c.layerCount {
            let f = language.architecture.feedForward(l)
            for (what, type) in [("gate", f.gate?.weight.type), ("up", Optional(f.up.weight.type)), ("down", Optional(downType))] {
                if let type, !powerInferTypes.contains(type) { foreign.insert("\(what) \(type)") }
            }
        }
        if !foreign.isEmpty {
            notes.append("FFN weights " + foreign.sorted().joined(separator: ", ")
                         + ": PowerInfer's sparse kernels compute only F16 and Q4_0 (its issue #196); Ember runs the file either way")
        }
        for (l, layer) in layers.enumerated() {
            for (part, w, scale) in [("fc1", layer.fc1, Float(1)), ("fc2", layer.fc2, scales[l])] {
                writer.addTensor("blk.\(l).\(part).weight", type: w.type, dims: [w.columns, w.rows]) { buffer in
                    withExtendedLifetime(predictors) {
                        if scale == 1 {
                            buffer.copyMemory(from: UnsafeRawBufferPointer(start: w.data, count: w.byteCount))
                            return
                        }
                        let row = UnsafeMutablePointer<Float>.allocate(capacity: w.columns)
                        defer { row.deallocate() }
                        for r in 0..<w.rows {
                            w.dequantizeRow(r, into: row)
                            for j in 0..<w.columns { row[j] *= scale }
                            ember_quantize_row(Int32(w.type.rawValue), row, buffer.baseAddress! + r * w.rowBytes, Int64(w.columns))
                        }
                    }
                }
            }
        }
        try writer.write(to: outputPath, progress: progress)
        return Report(architecture: c.architecture, predictorPath: predictorPath, threshold: threshold,
                      scaledPredictors: scales.contains { $0 != 1 }, downType: downType, notes: notes)
    }

    /// One threshold for all layers and the factor for each layer's fc2: the layers' own when
    /// they share it, else ±1 with fc2 scaled by 1/|τ_l| (all τ_l of one sign).
    static func foldThresholds(_ thresholds: [Float], path: String) throws -> (threshold: Float, scales: [Float]) {
        guard let first = thresholds.first else { return (0, []) }
        if thresholds.allSatisfy({ $0 == first }) { return (first, thresholds.map { _ in 1 }) }
        if thresholds.allSatisfy({ $0 > 0 }) { return (1, thresholds.map { 1 / $0 }) }
        if thresholds.allSatisfy({ $0 < 0 }) { return (-1, thresholds.map { 1 / -$0 }) }
        throw ExportError.thresholdSigns(path: path, thresholds: thresholds)
    }
}
