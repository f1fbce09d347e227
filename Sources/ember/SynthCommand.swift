import EmberCore
import EmberDownload
import Foundation

/// `ember synth`: writes a synthetic ReLU-family model with planted activation sparsity, for
/// speed measurements at sizes no downloadable ReLU model offers here.
enum SynthCommand {
    static let flags: [Arguments.Flag] = [
        .init(names: ["--arch"], takesValue: true,
              help: "family: " + SyntheticModel.Family.allCases.map(\.rawValue).joined(separator: ", ") + " (default llama)"),
        .init(names: ["--shape"], takesValue: true,
              help: "model shape: " + SyntheticModel.Shape.all.map(\.name).joined(separator: ", ")
                + " (default tiny; 7b is each family's own 7B)"),
        .init(names: ["--act"], takesValue: true, help: "FFN activation; only relu (the default) plants exact zeros"),
        .init(names: ["--sparsity"], takesValue: true, help: "average fraction of FFN neurons at zero per token (default 0.9)"),
        .init(names: ["--type"], takesValue: true,
              help: "matrix type: " + SyntheticModel.supportedTypes.map { $0.description.lowercased() }.joined(separator: ", ")
                + " (default q4_0)"),
        .init(names: ["--input-rank"], takesValue: true,
              help: "rank of the token structure that decides which neurons fire, so predictors can learn it; 0: none (default 16)"),
        .init(names: ["--seed"], takesValue: true, help: "random seed; the same seed gives the same bytes (default 0)"),
        .init(names: ["--output", "-o"], takesValue: true, help: "the GGUF file to write"),
        .init(names: ["--margin-predictors"], takesValue: true,
              help: "also write predictors that keep the hottest 30 % of each layer's neurons with a wide margin (exact across engines)"),
        CommonFlags.threads,
    ]

    static let summary = "write a synthetic ReLU-family model (llama, bamboo, falcon, opt) with planted FFN sparsity (for speed tests)"

    static func main(_ arguments: Arguments) async throws {
        let options = try parse(arguments)
        guard let path = arguments.string("--output") else { throw UsageError("give the output file with -o FILE.gguf") }
        try AtomicFileWriter.prepare(path)
        let predictorPath = arguments.string("--margin-predictors")
        if let predictorPath { try AtomicFileWriter.prepare(predictorPath) }
        let threads = try arguments.threads()

        let tokenizerPath = try ModelStore.ensure(KnownModel.defaultModel) { Terminal.note("ember: \($0)") }
        let progress = Progress("synth \(options.shape.name)")
        let start = DispatchTime.now()
        try SyntheticModel.write(options, tokenizerFrom: tokenizerPath, to: path, threads: threads) { done, total in
            progress.update(done >> 20, of: total >> 20, detail: "MiB")
        }
        progress.finish()
        let elapsed = seconds(since: start)
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        try Terminal.print(String(format: "wrote %@: %.1f MB in %.1f s (%@, shape %@, %@, sparsity %.2f, seed %llu)",
                     path, Double(size) / 1e6, elapsed, options.family.rawValue, options.shape.name, options.type.description,
                     options.sparsity, options.seed))
        try Terminal.print(SyntheticModel.description(options))
        if let predictorPath {
            try SyntheticModel.marginPredictors(options).write(to: predictorPath)
            try Terminal.print("wrote \(predictorPath): margin predictors (the hottest 30 % of each layer's neurons, always)")
        }
    }

    static func parse(_ arguments: Arguments) throws -> SyntheticModel.Options {
        let familyName = arguments.string("--arch") ?? "llama"
        guard let family = SyntheticModel.Family(rawValue: familyName) else {
            throw UsageError("--arch must be one of " + SyntheticModel.Family.allCases.map(\.rawValue).joined(separator: ", ")
                + ", not \(SafeText.quoted(familyName))")
        }
        let shapeName = arguments.string("--shape") ?? "tiny"
        guard let shape = SyntheticModel.Shape.named(shapeName, family: family) else {
            throw UsageError("--shape must be one of " + SyntheticModel.Shape.all.map(\.name).joined(separator: ", ")
                + ", not \"\(shapeName)\"")
        }
        let activation = arguments.string("--act") ?? "relu"
        guard activation == "relu" else {
            throw UsageError("--act must be relu (the only activation with planted exact zeros), not \"\(activation)\"")
        }
        let range = SyntheticModel.sparsityRange
        let sparsity = try arguments.float("--sparsity", default: 0.9,
                                           range: Float(range.lowerBound)...Float(range.upperBound))
        let typeName = arguments.string("--type") ?? "q4_0"
        guard let type = TensorType(name: typeName), SyntheticModel.supportedTypes.contains(type) else {
            throw UsageError("--type must be one of "
                + SyntheticModel.supportedTypes.map { $0.description.lowercased() }.joined(separator: ", ") + ", not \"\(typeName)\"")
        }
        let inputRank = try arguments.int("--input-rank", default: 16, range: SyntheticModel.inputRankRange)
        return SyntheticModel.Options(shape: shape, sparsity: Double(sparsity), type: type, seed: try arguments.seed() ?? 0,
                                      inputRank: inputRank, family: family)
    }
}
