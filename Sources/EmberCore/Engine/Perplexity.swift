import Foundation

/// Perplexity of a model on a text, by the rule llama.cpp's reference figures use: the text is
/// cut into consecutive, non-overlapping chunks of `context` tokens (a shorter tail is
/// dropped); each chunk is evaluated from an empty cache; every position after the first of a
/// chunk is scored by the log-probability the previous position gave it; PPL = exp(mean NLL).
public struct PerplexityResult: Sendable {
    public var chunks: Int
    public var scoredTokens: Int
    public var meanNegativeLogLikelihood: Double
    public var perplexity: Double { exp(meanNegativeLogLikelihood) }
}

public enum PerplexityError: Error, Equatable, LocalizedError, CustomStringConvertible {
    case textTooShort(tokens: Int, context: Int)
    case contextTooSmall(Int)

    public var description: String {
        switch self {
        case .textTooShort(let tokens, let context):
            return "the text has \(tokens) tokens, fewer than one chunk of \(context): use a longer text or a smaller context"
        case .contextTooSmall(let context):
            return "a context of \(context) is too small: a chunk needs at least 2 tokens"
        }
    }

    public var errorDescription: String? { description }
}

extension Context {
    /// `progress(chunksDone, chunks, runningPerplexity)` is called after every chunk.
    func perplexity(of tokens: [Int32], context: Int,
                           progress: (Int, Int, Double) -> Void = { _, _, _ in }) throws -> PerplexityResult {
        guard context >= 2 else { throw PerplexityError.contextTooSmall(context) }
        guard context <= contextLength else {
            throw ModelError.contextOverflow(needed: context, context: contextLength)
        }
        let chunks = tokens.count / context
        guard chunks > 0 else { throw PerplexityError.textTooShort(tokens: tokens.count, context: context) }
        let logits = Matrix(rows: context, length: vocabularySize)
        var total = 0.0
        var scored = 0
        for chunk in 0..<chunks {
            let piece = Array(tokens[chunk * context..<(chunk + 1) * context])
            reset()
            try evaluateAll(piece, into: logits)
            for position in 0..<(context - 1) {
                total -= Self.logProbability(of: Int(piece[position + 1]), in: logits.row(position), count: vocabularySize)
                scored += 1
            }
            progress(chunk + 1, chunks, exp(total / Double(scored)))
        }
        return PerplexityResult(chunks: chunks, scoredTokens: scored, meanNegativeLogLikelihood: total / Double(scored))
    }

    /// log softmax(logits)[token], summed in double so 262k-entry vocabularies lose nothing.
    static func logProbability(of token: Int, in logits: UnsafePointer<Float>, count: Int) -> Double {
        var maximum = logits[0]
        for i in 1..<count where logits[i] > maximum { maximum = logits[i] }
        var sum = 0.0
        for i in 0..<count { sum += exp(Double(logits[i] - maximum)) }
        return Double(logits[token] - maximum) - log(sum)
    }
}
