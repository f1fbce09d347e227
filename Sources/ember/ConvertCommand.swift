import EmberCore
import Foundation

/// `ember convert --to powerinfer IN.gguf OUT.gguf [--predictor PRED.gguf]`: the model in
/// PowerInfer's file format (PowerInferExport does the work).
enum ConvertCommand {
    static let flags: [Arguments.Flag] = [
        .init(names: ["--to"], takesValue: true, help: "the format to write: powerinfer"),
        .init(names: ["--predictor"], takesValue: true,
              help: "predictors from `ember train-predictor` (default: the model's own, else MODEL.predictor.gguf beside it)"),
        CommonFlags.threads,
    ]

    static let summary = "write IN.gguf as OUT.gguf in PowerInfer's format (--to powerinfer): neuron-major down, predictors, PWRI"

    static func main(_ arguments: Arguments) async throws {
        guard let format = arguments.string("--to") else { throw UsageError("give the format with --to powerinfer") }
        guard format == "powerinfer" else { throw UsageError("--to must be powerinfer, not \(SafeText.quoted(format))") }
        guard arguments.positional.count == 2 else {
            throw UsageError("give the input and the output: ember convert --to powerinfer IN.gguf OUT.gguf")
        }
        let (input, output) = (arguments.positional[0], arguments.positional[1])
        guard FileManager.default.fileExists(atPath: input) else { throw UsageError("no model file at \(input)") }
        if let predictor = arguments.string("--predictor"), !FileManager.default.fileExists(atPath: predictor) {
            throw UsageError("no predictor file at \(predictor)")
        }
        try AtomicFileWriter.prepare(output)
        let progress = Progress("convert")
        let report = try PowerInferExport.write(model: input, predictor: arguments.string("--predictor"), to: output,
                                                threads: try arguments.threads()) { done, total in
            progress.update(done >> 20, of: total >> 20, detail: "MiB")
        }
        progress.finish()
        for note in report.notes { Terminal.note("ember: " + note) }
        try Terminal.print("wrote \(output): \(report.architecture) in PowerInfer's format, down neuron-major as \(report.downType), "
                           + "predictors from \(report.predictorPath), threshold \(report.threshold)")
    }
}
