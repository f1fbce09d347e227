import EmberCore
import Foundation

/// `ember train-predictor`: trains one activation predictor per FFN layer on a text, with
/// labels from a statistics file's gate thresholds, and writes them as Ember's predictor file.
enum TrainPredictorCommand {
    static let flags: [Arguments.Flag] = [CommonFlags.model, CommonFlags.threads] + [
        .init(names: ["--stats"], takesValue: true, help: "activation statistics file (from `ember profile`; required)"),
        .init(names: ["--file", "-f"], takesValue: true, help: "UTF-8 training text (required); its last 15 % is held out"),
        .init(names: ["--output", "-o"], takesValue: true, help: "predictor file to write (required)"),
        .init(names: ["--sparsity"], takesValue: true, help: "target sparsity, one of the statistics file's (default: its only one)"),
        .init(names: ["--recall"], takesValue: true, help: "share of active neurons the predictors must keep (default 0.95)"),
        .init(names: ["--tokens"], takesValue: true, help: "use only the first N tokens of the text"),
        .init(names: ["--ctx", "-c"], takesValue: true, help: "tokens per chunk, each from an empty cache (default 256)"),
        .init(names: ["--min-rank"], takesValue: true, help: "smallest predictor rank (default 32)"),
        .init(names: ["--max-rank"], takesValue: true, help: "largest predictor rank (default: d·F / (3·(d + F)), a third of the gate's work)"),
        .init(names: ["--epochs"], takesValue: true, help: "passes over the training tokens per rank tried (default 12)"),
        .init(names: ["--seed"], takesValue: true, help: "random seed (default 1)"),
        .init(names: ["--layers"], takesValue: true, help: "comma-separated layers to train (default all; the others run dense)"),
        .init(names: ["--weight-type"], takesValue: true, help: "f16 | f32 | q8_0 | q4_0: how the weights are stored (default f16; q8_0 reads half its bytes per token)"),
        .init(names: ["--f32"], takesValue: false, help: "the same as --weight-type f32"),
    ]

    static let summary = "train per-layer activation predictors (PowerInfer's form) on a text"

    static func main(_ arguments: Arguments) async throws {
        guard let statsPath = arguments.string("--stats") else { throw UsageError("give the statistics file with --stats FILE") }
        guard let textPath = arguments.string("--file") else { throw UsageError("give the training text with -f FILE") }
        guard let output = arguments.string("--output") else { throw UsageError("give the output file with -o FILE") }
        try AtomicFileWriter.prepare(output)
        var options = PredictorTrainingOptions()
        options.targetRecall = try arguments.float("--recall", default: 0.95, range: 0.5...1)
        options.minRank = try arguments.int("--min-rank", default: 32, range: 1...65536)
        options.maxRank = try arguments.int("--max-rank", default: 0, range: options.minRank...65536)
        options.epochs = try arguments.int("--epochs", default: options.epochs, range: 1...10_000)
        options.weightType = arguments.has("--f32") ? .f32 : .f16
        if let name = arguments.string("--weight-type") {
            guard let type = PredictorTrainingOptions.weightTypes.first(where: { $0.description.lowercased() == name.lowercased() }) else {
                throw UsageError("--weight-type takes \(PredictorTrainingOptions.weightTypes.map { $0.description.lowercased() }.joined(separator: ", ")), not \"\(name)\"")
            }
            options.weightType = type
        }
        if let seed = try arguments.seed() { options.seed = seed }
        let context = try arguments.int("--ctx", default: 256, range: 2...1 << 20)
        let tokenLimit = try arguments.int("--tokens", default: Int.max, range: 1...Int.max)

        let stats = try ActivationStatistics(path: statsPath)
        let sparsity: Float? = arguments.has("--sparsity") ? try arguments.float("--sparsity", default: 0, range: 0...1) : nil
        if sparsity == nil, stats.sparsityTargets.count != 1 {
            throw UsageError("\(statsPath) has targets \(stats.sparsityTargets): choose one with --sparsity")
        }
        if let sparsity, stats.targetIndex(for: sparsity) == nil {
            throw UsageError("\(statsPath) has no threshold for sparsity \(sparsity); it has \(stats.sparsityTargets)")
        }
        let model = try SessionFlags.model(arguments)
        var layers: [Int]?
        if let list = arguments.string("--layers") {
            layers = try list.split(separator: ",").map { item in
                guard let l = Int(item.trimmingCharacters(in: .whitespaces)), l >= 0 else {
                    throw UsageError("--layers takes layer numbers, not \"\(item)\"")
                }
                return l
            }
        }
        let text = try TextInput.readFile(textPath)
        var sessionOptions = SessionOptions()
        sessionOptions.threads = try arguments.threads()
        sessionOptions.contextLength = min(context, model.contextLength)
        sessionOptions.sparsity = .dense
        let session = try Session(model: model, options: sessionOptions)

        let start = DispatchTime.now()
        let collecting = Progress("collecting"), training = Progress("training")
        let result = try await session.trainPredictors(text: text, statistics: stats, sparsity: sparsity, options: options,
                                                       chunkLength: context, maxTokens: tokenLimit, layers: layers,
                                                       writingTo: output) { stage, done, total in
            switch stage {
            case .collecting: collecting.update(done, of: total)
            case .training:
                collecting.finish()
                training.update(done, of: total)
            }
        }
        training.finish()
        let elapsed = seconds(since: start)

        try Terminal.print(String(format: "predictors for %@ at sparsity %.2f, recall target %.2f; tokens: %d train, %d validation (τ, rank), %d held out",
                                  URL(fileURLWithPath: model.path).lastPathComponent, result.targetSparsity, options.targetRecall,
                                  result.trainTokens, result.validationTokens, result.heldOutTokens))
        try Terminal.print("layer  rank  tried (rank:validation share)  hot80  active  τ         recall  precision  predicted")
        for r in result.layers {
            let tried = r.attempts.map { String(format: "%d:%.2f", $0.rank, $0.validationShare) }.joined(separator: " ")
            try Terminal.print(String(format: "%5d  %4d  %@  %.3f  %.3f   %-8.4g  %.3f   %.3f      %.3f", r.layer, r.rank,
                                      tried.padding(toLength: max(28, tried.count), withPad: " ", startingAt: 0), r.hotShare, r.activeShare,
                                      r.threshold, r.recall, r.precision, r.predictedShare))
        }
        let reports = result.layers
        func mean(_ values: [Float]) -> Float { values.reduce(0, +) / Float(max(values.count, 1)) }
        try Terminal.print(String(format: "mean: recall %.3f, precision %.3f, predicted %.3f (truly active %.3f); ranks %d–%d",
                                  mean(reports.map(\.recall)), mean(reports.map(\.precision)), mean(reports.map(\.predictedShare)),
                                  mean(reports.map(\.activeShare)), reports.map(\.rank).min() ?? 0, reports.map(\.rank).max() ?? 0))
        try Terminal.print(String(format: "wrote %@: %.2f MB of %@ weights (read per token) in %.1f s on %d threads",
                                  output, Double(result.byteCount) / 1e6, options.weightType.description, elapsed,
                                  sessionOptions.threads))
    }
}
