import Foundation

/// The hyperparameters of a transformer, read from GGUF metadata (`{arch}.*` keys).
public struct ModelConfig: Sendable {
    public enum Family: String, Sendable {
        /// Llama 2/3, Mistral, SmolLM2 and other `llama`-architecture files; Qwen2 adds biases.
        case llama, qwen2
        case gemma3
    }

    public var architecture: String
    public var family: Family
    public var layerCount: Int
    public var embeddingLength: Int
    public var feedForwardLength: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDimension: Int
    public var valueDimension: Int
    public var vocabularySize: Int
    public var contextLength: Int
    public var rmsEpsilon: Float
    /// The FFN activation: SiLU-gated for llama, GELU-gated for Gemma, ReLU for the sparse
    /// ReLU-family models (PowerInfer files, or the `ember.ffn_activation` key).
    public var activation: VectorKernels.Activation
    /// Rope of full-attention layers, and of sliding-window layers where it differs.
    public var rope: Rope
    public var slidingRope: Rope?
    /// Sliding-window size, and which layers use it.
    public var slidingWindow: Int?
    public var slidingLayers: [Bool]
    /// Multiplies the token embedding (Gemma: sqrt of the embedding length).
    public var embeddingScale: Float
    /// Multiplies q·k before the softmax.
    public var attentionScale: Float

    public var queryLength: Int { headCount * headDimension }
    public var kvLength: Int { kvHeadCount * headDimension }
    public var valueLength: Int { kvHeadCount * valueDimension }

    public init(file: GGUFFile) throws {
        let arch = try file.requiredString("general.architecture")
        architecture = arch
        switch arch {
        case "llama", "mistral": family = .llama
        case "qwen2": family = .qwen2
        case "gemma3": family = .gemma3
        default:
            throw ModelError.unsupportedArchitecture(path: file.path, architecture: arch)
        }
        func key(_ name: String) -> String { "\(arch).\(name)" }
        func required(_ name: String) throws -> Int {
            let value = try file.requiredInt(key(name))
            guard value > 0, value < 1 << 24 else {
                throw ModelError.badHyperparameter(path: file.path, key: key(name), value: "\(value)")
            }
            return value
        }

        layerCount = try required("block_count")
        embeddingLength = try required("embedding_length")
        feedForwardLength = try required("feed_forward_length")
        headCount = try required("attention.head_count")
        kvHeadCount = try file.int(key("attention.head_count_kv")) ?? headCount
        headDimension = try file.int(key("attention.key_length")) ?? embeddingLength / headCount
        valueDimension = try file.int(key("attention.value_length")) ?? headDimension
        contextLength = try file.int(key("context_length")) ?? 2048
        let tokens = try file.stringArray("tokenizer.ggml.tokens")?.count
        vocabularySize = try file.int(key("vocab_size")) ?? tokens ?? 0
        rmsEpsilon = Float(try file.float(key("attention.layer_norm_rms_epsilon")) ?? 1e-5)
        guard kvHeadCount > 0, headCount % kvHeadCount == 0, headDimension > 0, headDimension % 2 == 0,
              valueDimension > 0, vocabularySize > 0, contextLength > 0 else {
            throw ModelError.badHyperparameter(path: file.path, key: key("attention.head_count_kv"),
                                               value: "heads \(headCount), kv heads \(kvHeadCount), head size \(headDimension)")
        }

        let ropeDimensions = try file.int(key("rope.dimension_count")) ?? headDimension
        let ropeBase = try file.float(key("rope.freq_base")) ?? 10_000
        var linearScale = 1.0
        if try file.string(key("rope.scaling.type")) == "linear" {
            linearScale = try file.float(key("rope.scaling.factor")) ?? 1
        }
        guard ropeDimensions > 0, ropeDimensions <= headDimension, ropeDimensions % 2 == 0, ropeBase > 0, linearScale > 0 else {
            throw ModelError.badHyperparameter(path: file.path, key: key("rope.dimension_count"), value: "\(ropeDimensions)")
        }
        let layout: Rope.Layout = family == .llama ? .adjacent : .halves
        // Llama 3.1-style per-pair frequency divisors, when the file carries them.
        var factors: [Float]?
        if let info = file.tensorInfo("rope_freqs.weight"), info.type == .f32, info.elementCount == ropeDimensions / 2 {
            let pointer = file.data(of: info).assumingMemoryBound(to: Float.self)
            factors = Array(UnsafeBufferPointer(start: pointer, count: info.elementCount))
        }
        rope = Rope(layout: layout, dimensions: ropeDimensions, base: ropeBase, linearScale: linearScale, frequencyFactors: factors)

        slidingWindow = try file.int(key("attention.sliding_window"))
        slidingLayers = Array(repeating: false, count: layerCount)
        slidingRope = nil
        embeddingScale = 1
        attentionScale = 1 / Float(headDimension).squareRoot()
        activation = .silu

        switch family {
        case .llama, .qwen2:
            // A sliding window in a llama file (Mistral v0.1) applies to every layer.
            if slidingWindow != nil { slidingLayers = Array(repeating: true, count: layerCount) }
            if file.flavor == .powerInfer { activation = .relu }
        case .gemma3:
            // Gemma 3: five sliding-window layers, then one global layer; the sliding ones use
            // rope base 10000 (Gemma 3 technical report).
            let pattern = try file.int(key("attention.sliding_window_pattern")) ?? 6
            if slidingWindow != nil {
                slidingLayers = (0..<layerCount).map { pattern > 0 && $0 % pattern < pattern - 1 }
            }
            slidingRope = Rope(layout: layout, dimensions: ropeDimensions, base: 10_000)
            embeddingScale = Float(embeddingLength).squareRoot()
            activation = .gelu
        }
        if let name = try file.string("ember.ffn_activation") {
            guard let chosen = VectorKernels.Activation(rawValue: name) else {
                throw ModelError.badHyperparameter(path: file.path, key: "ember.ffn_activation", value: name)
            }
            activation = chosen
        }
        if let window = slidingWindow, window <= 0 {
            throw ModelError.badHyperparameter(path: file.path, key: key("attention.sliding_window"), value: "\(window)")
        }
    }

    /// The rope layer `layer` uses.
    public func rope(forLayer layer: Int) -> Rope {
        slidingLayers[layer] ? (slidingRope ?? rope) : rope
    }
}

/// Problems with a model file beyond its GGUF structure.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case unsupportedArchitecture(path: String, architecture: String)
    case badHyperparameter(path: String, key: String, value: String)
    case contextOverflow(needed: Int, context: Int)
    case invalidToken(id: Int, vocabularySize: Int)

    public var description: String {
        switch self {
        case .unsupportedArchitecture(let path, let architecture):
            return "\(path): architecture \"\(architecture)\" is not supported (Ember runs llama, mistral, qwen2 and gemma3)"
        case .badHyperparameter(let path, let key, let value):
            return "\(path): metadata \"\(key)\" has an unusable value (\(value))"
        case .contextOverflow(let needed, let context):
            return "the sequence needs \(needed) positions but the context holds \(context); use a larger --ctx or a shorter prompt"
        case .invalidToken(let id, let vocabularySize):
            return "token id \(id) is outside the vocabulary (0..<\(vocabularySize))"
        }
    }
}
