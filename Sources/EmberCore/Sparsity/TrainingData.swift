import CEmberKernels
import Foundation

/// Predictor training samples: per layer and token, the residual stream x entering the FFN
/// (before its norm) and which neurons were active, in token order.
public final class PredictorTrainingData: @unchecked Sendable {
    public struct Layer: Sendable {
        /// tokenCount × inputLength floats.
        public var inputs: [Float]
        /// tokenCount × wordsPerToken bit sets: bit i of a token's words = neuron i active.
        public var labels: [UInt64]
    }

    public let inputLength: Int
    public let neuronCount: Int
    public var wordsPerToken: Int { (neuronCount + 63) / 64 }
    public let tokenCount: Int
    /// Indexed by model layer; nil for layers not collected.
    public let layers: [Layer?]

    public init(inputLength: Int, neuronCount: Int, tokenCount: Int, layers: [Layer?]) {
        self.inputLength = inputLength
        self.neuronCount = neuronCount
        self.tokenCount = tokenCount
        self.layers = layers
    }

    /// Share of (token, neuron) pairs active in `tokens` of layer `l`.
    public func activeShare(layer l: Int, tokens: Range<Int>) -> Double {
        guard let layer = layers[l], !tokens.isEmpty else { return 0 }
        let w = wordsPerToken
        var ones = 0
        for word in layer.labels[tokens.lowerBound * w..<tokens.upperBound * w] { ones += word.nonzeroBitCount }
        return Double(ones) / Double(tokens.count * neuronCount)
    }

    /// Runs the model over `tokens` in chunks of `context` tokens, each from an empty cache
    /// (as perplexity does), and records for `layers` the FFN input and the active set: neuron
    /// i is active when |act(gate_i)| ≥ thresholds[l] (with `relu`, when act > 0).
    /// `progress(done, total)` counts chunks.
    public static func collect(session: Session, tokens: [Int32], context: Int, layers: [Int],
                               thresholds: [Float], relu: Bool,
                               progress: (Int, Int) -> Void = { _, _ in }) throws -> PredictorTrainingData {
        let config = session.model.config
        let d = config.embeddingLength, f = config.feedForwardLength
        let words = (f + 63) / 64
        let chunks = tokens.count / context
        guard chunks > 0 else { throw PerplexityError.textTooShort(tokens: tokens.count, context: context) }
        let count = chunks * context
        var inputs = [Int: [Float]](), labels = [Int: [UInt64]]()
        for l in layers {
            inputs[l] = []; inputs[l]!.reserveCapacity(count * d)
            labels[l] = []; labels[l]!.reserveCapacity(count * words)
        }
        let wanted = Set(layers)
        let previous = session.pass.feedForwardObserver
        defer { session.pass.feedForwardObserver = previous }
        session.pass.feedForwardObserver = { observation in
            let l = observation.layer
            guard wanted.contains(l) else { return }
            let n = observation.tokenCount
            var bits = [UInt64](repeating: 0, count: n * words)
            bits.withUnsafeMutableBufferPointer { bits in
                for t in 0..<n {
                    ember_active_bits(observation.activated.row(t), Int64(f), relu ? 0 : thresholds[l], relu ? 0 : 1,
                                      bits.baseAddress! + t * words)
                }
            }
            labels[l]!.append(contentsOf: bits)
            inputs[l]!.append(contentsOf: UnsafeBufferPointer(start: observation.input.pointer, count: n * d))
        }
        for chunk in 0..<chunks {
            session.reset()
            try session.evaluate(Array(tokens[chunk * context..<(chunk + 1) * context]))
            progress(chunk + 1, chunks)
        }
        session.reset()
        let all = (0..<config.layerCount).map { l in
            inputs[l].map { Layer(inputs: $0, labels: labels[l]!) }
        }
        return PredictorTrainingData(inputLength: d, neuronCount: f, tokenCount: count, layers: all)
    }
}
