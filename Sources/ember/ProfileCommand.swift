import EmberCore
import Foundation

/// `ember profile`: how often each FFN neuron fires on a corpus, the thresholds reaching target
/// sparsities, and how concentrated the firing is (activation locality).
enum ProfileCommand {
    static let flags: [Arguments.Flag] = CommonFlags.all.filter { $0.names[0] != "--ctx" } + [
        .init(names: ["--file", "-f"], takesValue: true, help: "UTF-8 calibration text (required)"),
        .init(names: ["--output", "-o"], takesValue: true, help: "statistics file to write (GGUF; required)"),
        .init(names: ["--ctx", "-c"], takesValue: true, help: "tokens per chunk, each from an empty cache (default 256)"),
        .init(names: ["--tokens"], takesValue: true, help: "profile only the first N tokens of the text"),
        .init(names: ["--targets"], takesValue: true,
              help: "target sparsities, comma-separated (default 0.3,0.4,0.5,0.6,0.7,0.8,0.9; ReLU models: natural)"),
        .init(names: ["--at"], takesValue: true, help: "target for the per-layer summary and the plot (default 0.7)"),
        .init(names: ["--plot"], takesValue: true, help: "also draw the activation frequencies as an SVG chart"),
        .init(names: ["--compare"], takesValue: true, help: "statistics of another text: report the hottest-20 % overlap"),
    ]

    static let summary = "activation statistics and thresholds of the FFN neurons on a text"

    static func main(_ arguments: Arguments) async throws {
        guard let path = arguments.string("--file") else { throw UsageError("give the calibration text with -f FILE") }
        guard let output = arguments.string("--output") else { throw UsageError("give the statistics file with -o FILE") }
        // Output paths are checked before the work, not after it.
        try AtomicFileWriter.prepare(output)
        if let plot = arguments.string("--plot") { try AtomicFileWriter.prepare(plot) }
        let chunk = try arguments.int("--ctx", default: 256, range: 1...1 << 20)
        let tokenLimit = try arguments.int("--tokens", default: Int.max, range: 1...Int.max)
        let targets = try parseTargets(arguments.string("--targets") ?? "0.3,0.4,0.5,0.6,0.7,0.8,0.9")
        let reported = try arguments.float("--at", default: 0.7, range: 0...1)
        let other = try arguments.string("--compare").map { try ActivationStatistics(path: $0) }

        let text = try TextInput.readFile(path)
        let model = try SessionFlags.model(arguments)
        var options = try SessionFlags.options(arguments)
        options.contextLength = min(chunk, model.contextLength)
        options.sparsity = .dense
        let session = try Session(model: model, options: options)
        let progress = Progress("profile")
        let start = DispatchTime.now()
        let profile = try await session.profile(text: text, chunkLength: chunk, maxTokens: tokenLimit, targets: targets) { done, total in
            progress.update(done, of: total, detail: done * 2 <= total ? "calibrating" : "counting")
        }
        let statistics = profile.statistics
        progress.finish()
        let elapsed = seconds(since: start)
        try statistics.write(to: output)
        Terminal.note(String(format: "[%d tokens in %.1f s, %.0f tokens/s; wrote %@]",
                             statistics.tokens, elapsed, Double(statistics.tokens) / elapsed, output))

        // ReLU models have one target, their natural sparsity; otherwise the one asked for.
        let index = statistics.sparsityTargets.count == 1 ? 0 : statistics.targetIndex(for: reported)
        guard let index else {
            throw UsageError("--at \(reported) is not one of the targets \(statistics.sparsityTargets.map { "\($0)" }.joined(separator: ","))")
        }
        try printSummary(statistics, targetIndex: index)
        if let other { try printOverlap(statistics, other, targetIndex: index) }
        if let plot = arguments.string("--plot") {
            let title = "Activation frequency — \(statistics.sourceModel)"
            try FrequencyPlot.write(statistics, targetIndex: index, title: title, to: plot)
            Terminal.note("[wrote \(plot)]")
        }
        if let measured = profile.measured {
            try Terminal.print("\ncheck: sparsity the thresholds reach on the same tokens (mean over layers / largest deviation):")
            for (s, target) in statistics.sparsityTargets.enumerated() {
                func line(_ values: [[Double]]) -> String {
                    let column = values.map { $0[s] }
                    let deviation = column.map { abs($0 - Double(target)) }.max() ?? 0
                    return String(format: "%.4f / %.4f", column.reduce(0, +) / Double(column.count), deviation)
                }
                try Terminal.print(String(format: "  target %.2f: gate %@   down %@", target, line(measured.gate), line(measured.down)))
            }
        }
    }

    static func parseTargets(_ text: String) throws -> [Float] {
        let values = text.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ $0 != nil && $0! > 0 && $0! < 1 }) else {
            throw UsageError("--targets must be comma-separated sparsities strictly between 0 and 1, not \"\(text)\"")
        }
        return Array(Set(values.map { $0! })).sorted()
    }

    static func printSummary(_ statistics: ActivationStatistics, targetIndex: Int) throws {
        let relu = statistics.activation == "relu"
        try Terminal.print("locality of \(statistics.sourceModel) over \(statistics.tokens) tokens"
              + (relu ? " (ReLU: active = act > 0)" : " (active = |act(gate)| ≥ per-layer threshold)"))
        try Terminal.print("all targets, whole model (neurons of all layers ranked together):")
        try Terminal.print("  target  sparsity  neurons for 80 % of activations  activations of hottest 20 %")
        for s in statistics.sparsityTargets.indices {
            let o = LocalitySummary(statistics, targetIndex: s).overall
            try Terminal.print(String(format: "  %5.1f %%  %6.1f %%  %20.1f %%  %27.1f %%", statistics.sparsityTargets[s] * 100,
                         o.sparsity * 100, o.coveringShare * 100, o.hottestShare * 100))
        }
        let summary = LocalitySummary(statistics, targetIndex: targetIndex)
        try Terminal.print(String(format: "per layer at target %.1f %%:", summary.sparsityTarget * 100))
        try Terminal.print("  layer  sparsity  gate threshold  neurons for 80 %  hottest 20 % share")
        for (l, entry) in summary.layers.enumerated() {
            try Terminal.print(String(format: "  %5d  %6.1f %%  %14.5g  %14.1f %%  %16.1f %%", l, entry.sparsity * 100,
                         statistics.layers[l].gateThresholds[targetIndex], entry.coveringShare * 100, entry.hottestShare * 100))
        }
        let mean = summary.layers.map(\.coveringShare).reduce(0, +) / Double(summary.layers.count)
        try Terminal.print(String(format: "  mean over layers: %.1f %% of neurons cover 80 %% of activations; whole model: %.1f %%; hottest 20 %% make %.1f %%",
                     mean * 100, summary.overall.coveringShare * 100, summary.overall.hottestShare * 100))
    }

    static func printOverlap(_ statistics: ActivationStatistics, _ other: ActivationStatistics, targetIndex: Int) throws {
        let target = statistics.sparsityTargets[targetIndex]
        guard let otherIndex = other.sparsityTargets.count == 1 ? 0 : other.targetIndex(for: target) else {
            throw UsageError("the --compare statistics have no target \(target)")
        }
        let overlap = try LocalitySummary.hotSetOverlap(statistics, other, targetIndex: targetIndex, otherTargetIndex: otherIndex)
        try Terminal.print("hottest 20 % of neurons shared with the --compare statistics, per layer:")
        try Terminal.print("  " + overlap.map { String(format: "%.2f", $0) }.joined(separator: " "))
        try Terminal.print(String(format: "  mean %.3f, min %.3f, max %.3f", overlap.reduce(0, +) / Double(overlap.count),
                     overlap.min() ?? 0, overlap.max() ?? 0))
    }
}
