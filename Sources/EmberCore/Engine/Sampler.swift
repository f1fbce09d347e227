import Foundation

/// How the next token is drawn from the logits. The steps run in the order llama.cpp's common
/// sampler uses, so the same settings mean the same thing: repetition penalty, presence and
/// frequency penalties, top-k, top-p, min-p, temperature, then a weighted draw. A temperature
/// of 0 or less is greedy.
public struct SamplerSettings: Sendable, Equatable {
    public var temperature: Float = 0.8
    public var topK = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    public var repeatPenalty: Float = 1.0
    /// How many of the most recent tokens the penalties look at (-1: all).
    public var repeatLastN = 64
    /// OpenAI's penalties: a token seen c times among the recent ones loses
    /// c · frequencyPenalty + (c > 0 ? presencePenalty : 0) from its logit.
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// nil draws a seed from the system.
    public var seed: UInt64?

    public init() {}

    public static var greedy: SamplerSettings {
        var settings = SamplerSettings()
        settings.temperature = 0
        return settings
    }
}

/// Draws tokens by its settings; its random state advances with every draw.
struct Sampler {
    let settings: SamplerSettings
    private var random: SplitMix64

    init(_ settings: SamplerSettings) {
        self.settings = settings
        random = SplitMix64(seed: settings.seed ?? UInt64.random(in: .min ... .max))
    }

    /// Picks the next token given the logits and the tokens so far (for the penalty).
    mutating func sample(_ logits: UnsafeBufferPointer<Float>, history: [Int32]) -> Int32 {
        // The penalty patches a copy, made only when it applies: the scans below read every
        // logit, and a lookup per entry would cost milliseconds on a 262k vocabulary.
        var patched: [Float]?
        let penalized = settings.repeatPenalty != 1 || settings.presencePenalty != 0 || settings.frequencyPenalty != 0
        if penalized, settings.repeatLastN != 0 {
            var copy = Array(logits)
            let recent = settings.repeatLastN < 0 ? history[...] : history.suffix(settings.repeatLastN)
            var counts: [Int32: Int] = [:]
            for token in recent { counts[token, default: 0] += 1 }
            for (token, count) in counts where token >= 0 && Int(token) < copy.count {
                var logit = copy[Int(token)]
                if settings.repeatPenalty != 1 {
                    logit = logit > 0 ? logit / settings.repeatPenalty : logit * settings.repeatPenalty
                }
                logit -= Float(count) * settings.frequencyPenalty + settings.presencePenalty
                copy[Int(token)] = logit
            }
            patched = copy
        }
        if let patched {
            return patched.withUnsafeBufferPointer { choose(from: $0) }
        }
        return choose(from: logits)
    }

    private mutating func choose(from logits: UnsafeBufferPointer<Float>) -> Int32 {
        if settings.temperature <= 0 { return argmax(logits) }

        // Candidates sorted by logit, the k best when top-k is on.
        let k = settings.topK > 0 ? min(settings.topK, logits.count) : logits.count
        var candidates = Self.best(k, of: logits.count) { logits[$0] }

        // Probabilities at temperature 1 decide the top-p and min-p cuts.
        var probabilities = Self.softmax(candidates.map(\.logit), temperature: 1)
        if settings.topP < 1 {
            var cumulative: Float = 0
            var keep = candidates.count
            for (i, p) in probabilities.enumerated() {
                cumulative += p
                if cumulative >= settings.topP { keep = i + 1; break }
            }
            candidates.removeSubrange(keep...)
            probabilities.removeSubrange(keep...)
        }
        if settings.minP > 0, let top = probabilities.first {
            let keep = max(1, probabilities.prefix { $0 >= settings.minP * top }.count)
            candidates.removeSubrange(keep...)
        }
        probabilities = Self.softmax(candidates.map(\.logit), temperature: settings.temperature)

        var draw = Float(Double(random.next() >> 11) * 0x1.0p-53)
        for (i, p) in probabilities.enumerated() {
            draw -= p
            if draw < 0 { return candidates[i].token }
        }
        return candidates[candidates.count - 1].token
    }

    /// The `k` highest-scoring of `count` tokens, best first.
    private static func best(_ k: Int, of count: Int, logit: (Int) -> Float) -> [(token: Int32, logit: Float)] {
        if k >= count {
            return (0..<count).map { (Int32($0), logit($0)) }.sorted { $0.logit > $1.logit }
        }
        // Keep a sorted list of the best k seen: cheap when k is small next to the vocabulary.
        var top: [(token: Int32, logit: Float)] = []
        top.reserveCapacity(k + 1)
        for token in 0..<count {
            let value = logit(token)
            if top.count == k, value <= top[k - 1].logit { continue }
            var index = top.count
            while index > 0, top[index - 1].logit < value { index -= 1 }
            top.insert((Int32(token), value), at: index)
            if top.count > k { top.removeLast() }
        }
        return top
    }

    private static func softmax(_ logits: [Float], temperature: Float) -> [Float] {
        guard let maximum = logits.first else { return [] }
        let exps = logits.map { expf(($0 - maximum) / temperature) }
        let sum = exps.reduce(0, +)
        return exps.map { $0 / sum }
    }
}
