import EmberCore
import Foundation

/// `ember perplexity`: how well the model predicts a text (lower is better).
enum PerplexityCommand {
    static let flags: [Arguments.Flag] = SessionFlags.sparsity + CommonFlags.all.filter { $0.names[0] != "--ctx" } + [
        .init(names: ["--file", "-f"], takesValue: true, help: "UTF-8 text to score (required)"),
        .init(names: ["--ctx", "-c"], takesValue: true, help: "tokens per chunk (default 512)"),
        .init(names: ["--chunks"], takesValue: true, help: "score only the first N chunks"),
    ]

    static let summary = "perplexity of a text: chunks of --ctx tokens, each from an empty cache"

    static func main(_ arguments: Arguments) async throws {
        guard let path = arguments.string("--file") else { throw UsageError("give the text with -f FILE") }
        let text = try TextInput.readFile(path)
        let chunk = try arguments.int("--ctx", default: 512, range: 2...1 << 20)
        let chunkLimit = try arguments.int("--chunks", default: Int.max, range: 1...Int.max)
        let model = try SessionFlags.model(arguments)
        var options = try SessionFlags.options(arguments)
        // --ctx is the chunk here: the cache holds one chunk.
        options.contextLength = min(chunk, model.contextLength)
        let session = try Session(model: model, options: options)
        for note in session.notes { Terminal.note("ember: " + note) }
        let progress = Progress("perplexity")
        let start = DispatchTime.now()
        let result = try await session.perplexity(of: text, chunkLength: chunk, maxChunks: chunkLimit) { done, total, running in
            progress.update(done, of: total, detail: String(format: "ppl %.4f", running))
        }
        progress.finish()
        let elapsed = seconds(since: start)
        try Terminal.print(String(format: "perplexity: %.4f (mean NLL %.6f) over %d scored tokens, %d chunks of %d",
                                  result.perplexity, result.meanNegativeLogLikelihood, result.scoredTokens, result.chunks, chunk))
        if let report = await session.sparsityReport {
            try Terminal.print(String(format: "sparsity: %@, %.1f %% of FFN neurons skipped", session.sparsityMode.description,
                                      report.skipped * 100))
        }
        Terminal.note(String(format: "[%.1f s, %.1f tokens/s]", elapsed, Double(result.chunks * chunk) / elapsed))
    }
}
