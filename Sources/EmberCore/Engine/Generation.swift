import Foundation

/// Why a generation ended.
public enum StopReason: String, Sendable {
    /// The model produced its end-of-generation token.
    case endOfGeneration = "end of generation"
    /// The text reached one of the stop strings.
    case stopString = "stop string"
    case tokenLimit = "token limit"
    case contextFull = "context full"
    /// The caller stopped it (cancelled the task).
    case cancelled = "cancelled"
}

/// What a generation did and how fast.
public struct GenerationStatistics: Sendable {
    public var promptTokens = 0
    public var promptSeconds = 0.0
    /// Tokens produced, including a final end-of-generation token.
    public var generatedTokens = 0
    /// Single-token evaluations after the prompt and the time they took.
    public var decodeEvaluations = 0
    public var decodeSeconds = 0.0
    public var stopReason = StopReason.tokenLimit

    public init() {}

    public var promptTokensPerSecond: Double { promptSeconds > 0 ? Double(promptTokens) / promptSeconds : 0 }
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(decodeEvaluations) / decodeSeconds : 0 }
}

public enum GenerationError: Error, Equatable, LocalizedError, CustomStringConvertible {
    case emptyPrompt

    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt is empty: give at least one token"
        }
    }

    public var errorDescription: String? { description }
}

extension Context {
    /// Continues the cached sequence with `prompt` (evaluating only what the cache lacks), then
    /// samples up to `maxTokens` tokens. Each token goes to `onToken` as soon as it is chosen;
    /// returning false stops (reason `.cancelled`). A token for which `isEnd` is true is reported
    /// and ends the generation. The last token produced is not evaluated (nothing needs its
    /// logits); the next `generate` or `continueWith` evaluates it when the conversation goes on.
    func generate(prompt: [Int32], maxTokens: Int, sampler: inout Sampler,
                  isEnd: (Int32) -> Bool, onToken: (Int32) -> Bool) throws -> GenerationStatistics {
        var statistics = GenerationStatistics()
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        guard prompt.count < contextLength else {
            throw ModelError.contextOverflow(needed: prompt.count + 1, context: contextLength)
        }
        let promptStart = DispatchTime.now()
        let before = position
        try continueWith(prompt)
        statistics.promptTokens = position - before
        statistics.promptSeconds = seconds(since: promptStart)

        var history = prompt
        while statistics.generatedTokens < maxTokens {
            let token = withLogits { sampler.sample($0, history: history) }
            history.append(token)
            statistics.generatedTokens += 1
            guard onToken(token) else { statistics.stopReason = .cancelled; return statistics }
            if isEnd(token) { statistics.stopReason = .endOfGeneration; return statistics }
            if statistics.generatedTokens == maxTokens { break }
            if position + 1 >= contextLength { statistics.stopReason = .contextFull; return statistics }
            let start = DispatchTime.now()
            try advance([token])
            statistics.decodeSeconds += seconds(since: start)
            statistics.decodeEvaluations += 1
        }
        statistics.stopReason = .tokenLimit
        return statistics
    }
}
