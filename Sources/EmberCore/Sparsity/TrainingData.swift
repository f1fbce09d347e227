import CEmberKernels
import Foundation

/// Predictor training samples: per layer and token, the residual stream x entering the FFN
/// (before its norm) and which neurons were active, in token order.
final class PredictorTrainingData: Sendable {
    struct Layer: Sendable {
        /// tokenCount × inputLength floats.
        var inputs: [Float]
        /// tokenCount × wordsPerToken bit sets: bit i of a token's words = neuron i active.
        var labels: [UInt64]
    }

    let inputLength: Int
    let neuronCount: Int
    var wordsPerToken: Int { (neuronCount + 63) / 64 }
    let tokenCount: Int
    /// Indexed by model layer; nil for layers not collected.
    let layers: [Layer?]

    init(inputLength: Int, neuronCount: Int, tokenCount: Int, layers: [Layer?]) {
        self.inputLength = inputLength
        self.neuronCount = neuronCount
        self.tokenCount = tokenCount
        self.layers = layers
    }

    /// Share of (token, neuron) pairs active in `tokens` of layer `l`.
    func activeShare(layer l: Int, tokens: Range<Int>) -> Double {
        guard let layer = layers[l], !tokens.isEmpty else { return 0 }
        let w = wordsPerToken
        var ones = 0
        for word in layer.labels[tokens.lowerBound * w..<tokens.upperBound * w] { ones += word.nonzeroBitCount }
        return Double(ones) / Double(tokens.count * neuronCount)
    }

}
