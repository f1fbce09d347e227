/// The shape of a transformer, common to every architecture: what the executors, the KV cache,
/// the sparsity layer and placement need to know. What differs between architectures (norms,
/// rope, windows, scales, biases) lives in the layers each architecture file builds
/// (Layers.swift).
struct ModelConfig: Sendable {
    var architecture: String
    var layerCount: Int
    var embeddingLength: Int
    var feedForwardLength: Int
    var headCount: Int
    var kvHeadCount: Int
    var headDimension: Int
    var valueDimension: Int
    var vocabularySize: Int
    /// The context the model was trained for: the most positions a session may hold.
    var contextLength: Int
    /// The FFN activation of every layer (ReLU-family models are the ones with exact zeros).
    var activation: VectorKernels.Activation

    var queryLength: Int { headCount * headDimension }
    var kvLength: Int { kvHeadCount * headDimension }
    var valueLength: Int { kvHeadCount * valueDimension }
    var attentionOutputLength: Int { headCount * valueDimension }

    /// Reads the hyperparameters most architectures share under their `{arch}.` prefix (the
    /// key names llama.cpp's GGUF files use), each within the bounds of `Limits`.
    init(_ m: HyperparameterReader, activation: VectorKernels.Activation) throws {
        architecture = m.architecture
        self.activation = activation
        layerCount = try m.int("block_count", within: ReaderLimits.layers)
        embeddingLength = try m.int("embedding_length", within: ReaderLimits.embeddingLength)
        feedForwardLength = try m.int("feed_forward_length", within: ReaderLimits.feedForwardLength)
        headCount = try m.int("attention.head_count", within: ReaderLimits.heads)
        kvHeadCount = try m.int("attention.head_count_kv", in: 1...headCount, default: headCount)
        guard headCount % kvHeadCount == 0 else {
            throw ModelError.badHyperparameter(path: m.path, key: m.key("attention.head_count_kv"),
                                               value: "\(kvHeadCount)", expected: "a divisor of the \(headCount) heads")
        }
        let defaultHead = embeddingLength / headCount
        headDimension = try m.int("attention.key_length", within: ReaderLimits.headDimension, default: defaultHead)
        guard headDimension % 2 == 0 else {
            throw ModelError.badHyperparameter(path: m.path, key: m.key("attention.key_length"),
                                               value: "\(headDimension)", expected: "an even head dimension")
        }
        valueDimension = try m.int("attention.value_length", within: ReaderLimits.headDimension, default: headDimension)
        contextLength = try m.int("context_length", within: ReaderLimits.contextLength, default: 2048)
        let listed = try m.file.stringArray("tokenizer.ggml.tokens")?.count
        vocabularySize = try m.int("vocab_size", within: ReaderLimits.vocabulary, default: listed ?? 0)
        // Every size the engine derives is a product of a few of these, each far below 2^32
        // (ReaderLimits), so none overflows; the KV cache is checked where it is allocated.
        if let experts = try m.file.int(m.key("expert_count")) {
            try ReaderLimits.experts.check(experts, what: "metadata key", subject: m.key("expert_count"), file: m.path)
        }
    }
}

/// Reads `{architecture}.*` metadata keys with bounds, naming the key and the bound in errors.
struct HyperparameterReader {
    let file: GGUFFile
    let architecture: String
    var path: String { file.path }

    func key(_ name: String) -> String { "\(architecture).\(name)" }

    /// The integer `{arch}.name`, or `fallback` when absent (required when there is none),
    /// within one of Ember's reader limits.
    func int(_ name: String, within limit: ReaderLimit, default fallback: Int? = nil) throws -> Int {
        let full = key(name)
        guard let value = try file.int(full, within: limit) ?? fallback else { throw GGUFError.missingKey(path: path, key: full) }
        return try limit.check(value, what: "metadata key", subject: full, file: path)
    }

    /// The integer `{arch}.name`, or `fallback` when absent (required when there is none).
    func int(_ name: String, in range: ClosedRange<Int>, default fallback: Int? = nil) throws -> Int {
        let full = key(name)
        guard let value = try file.int(full) ?? fallback else { throw GGUFError.missingKey(path: path, key: full) }
        guard range.contains(value) else {
            throw ModelError.badHyperparameter(path: path, key: full, value: "\(value)",
                                               expected: "\(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// The optional integer `{arch}.name`, checked against `range` when present.
    func optionalInt(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
        try file.int(key(name)) == nil ? nil : try int(name, in: range)
    }

    /// The number `{arch}.name` (any numeric type), or `fallback`; finite and within `range`.
    func float(_ name: String, in range: ClosedRange<Double>, default fallback: Double) throws -> Double {
        let full = key(name)
        let value = try file.float(full) ?? fallback
        guard value.isFinite, range.contains(value) else {
            throw ModelError.badHyperparameter(path: path, key: full, value: "\(value)",
                                               expected: "a finite number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    func string(_ name: String) throws -> String? { try file.string(key(name)) }

    /// Rotary embedding from the usual keys (`rope.dimension_count`, `rope.freq_base`, linear
    /// `rope.scaling.*`, Llama 3.1's `rope_freqs.weight`), over heads of `headDimension`.
    func rope(layout: Rope.Layout, headDimension: Int, defaultBase: Double = 10_000) throws -> Rope {
        let dimensions = try int("rope.dimension_count", in: 2...headDimension, default: headDimension)
        guard dimensions % 2 == 0 else {
            throw ModelError.badHyperparameter(path: path, key: key("rope.dimension_count"), value: "\(dimensions)",
                                               expected: "an even number")
        }
        let base = try float("rope.freq_base", in: 1...1e12, default: defaultBase)
        var scale = 1.0
        if try string("rope.scaling.type") == "linear" {
            scale = try float("rope.scaling.factor", in: 1e-6...1e6, default: 1)
        }
        // Per-pair frequency divisors, when the file carries them.
        var factors: [Float]?
        if let info = file.tensorInfo("rope_freqs.weight"), info.type == .f32, info.elementCount == dimensions / 2 {
            let values = UnsafeBufferPointer(start: file.data(of: info).assumingMemoryBound(to: Float.self), count: info.elementCount)
            guard values.allSatisfy({ $0.isFinite && $0 > 0 }) else {
                throw ModelError.badHyperparameter(path: path, key: "rope_freqs.weight", value: "a non-positive or non-finite factor",
                                                   expected: "positive finite factors")
            }
            factors = Array(values)
        }
        return Rope(layout: layout, dimensions: dimensions, base: base, linearScale: scale, frequencyFactors: factors)
    }
}
