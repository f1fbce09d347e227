import Foundation

/// How often each FFN neuron of each layer fires, and the per-layer thresholds that reach given
/// sparsities: what `ember profile` measures and writes, and what predictor training and GPU
/// placement read.
///
/// A neuron is active for a token when |act(gate)| ≥ the layer's gate threshold (ReLU models:
/// when act > 0, threshold 0). For each target sparsity S (share of neurons inactive, averaged
/// over tokens) the profiler stores the gate threshold reaching S, the threshold on
/// |act(gate) · up| reaching S (the `down:S` mode), and each neuron's active count at the gate
/// threshold.
///
/// File: GGUF, `general.architecture = ember.stats`, keys `ember.stats.*`, and per layer N the
/// F32 tensors `blk.N.gate_thresholds` [T], `blk.N.down_thresholds` [T] and
/// `blk.N.activation_counts` [F, T] (row t: counts of the F neurons at target t).
public struct ActivationStatistics: Sendable, Equatable {
    public struct Layer: Sendable, Equatable {
        public var gateThresholds: [Float]
        public var downThresholds: [Float]
        /// counts[t][i]: tokens for which neuron i was active at target t's gate threshold.
        public var counts: [[Float]]

        public init(gateThresholds: [Float], downThresholds: [Float], counts: [[Float]]) {
            self.gateThresholds = gateThresholds
            self.downThresholds = downThresholds
            self.counts = counts
        }
    }

    public var sourceModel: String
    public var corpusSHA256: String
    /// Tokens the counts were taken over.
    public var tokens: Int
    /// The FFN activation: relu, silu or gelu.
    public var activation: String
    public var gated: Bool
    public var feedForwardLength: Int
    /// Target sparsities, ascending (ReLU models: one entry, the measured natural sparsity).
    public var sparsityTargets: [Float]
    public var layers: [Layer]

    public init(sourceModel: String, corpusSHA256: String, tokens: Int, activation: String, gated: Bool,
                feedForwardLength: Int, sparsityTargets: [Float], layers: [Layer]) {
        self.sourceModel = sourceModel
        self.corpusSHA256 = corpusSHA256
        self.tokens = tokens
        self.activation = activation
        self.gated = gated
        self.feedForwardLength = feedForwardLength
        self.sparsityTargets = sparsityTargets
        self.layers = layers
    }

    static let architecture = "ember.stats"

    /// The index of the target nearest to `sparsity`, if one is within 0.005 of it.
    public func targetIndex(for sparsity: Float) -> Int? {
        guard let best = sparsityTargets.indices.min(by: { abs(sparsityTargets[$0] - sparsity) < abs(sparsityTargets[$1] - sparsity) }),
              abs(sparsityTargets[best] - sparsity) <= 0.005 else { return nil }
        return best
    }

    /// Reads a statistics file. Counts and sizes are checked against `ReaderLimits`, and every
    /// threshold and count must be a finite number (counts also non-negative): a NaN threshold
    /// would silently skip every neuron.
    init(file: GGUFFile) throws {
        let path = file.path
        guard try file.string("general.architecture") == Self.architecture else {
            throw SparsityError.notAStatisticsFile(path: path)
        }
        func malformed(_ detail: String) -> SparsityError { .malformed(path: path, detail: detail) }
        sourceModel = try file.string("ember.stats.source_model") ?? ""
        corpusSHA256 = try file.string("ember.stats.corpus_sha256") ?? ""
        tokens = try file.requiredInt("ember.stats.tokens")
        guard tokens >= 0 else { throw malformed("ember.stats.tokens is negative (\(tokens))") }
        activation = try file.requiredString("ember.stats.activation")
        guard VectorKernels.Activation(rawValue: activation) != nil else {
            throw malformed("ember.stats.activation is \(SafeText.quoted(activation)), expected relu, silu or gelu")
        }
        gated = try file.bool("ember.stats.gated") ?? true
        feedForwardLength = try file.requiredInt("ember.stats.feed_forward_length", within: ReaderLimits.feedForwardLength)
        let layerCount = try file.requiredInt("ember.stats.layer_count", within: ReaderLimits.layers)
        sparsityTargets = try file.floatArray("ember.stats.sparsity_targets") ?? []
        let t = try ReaderLimits.sparsityTargets.check(sparsityTargets.count, what: "number of entries of metadata key",
                                                       subject: "ember.stats.sparsity_targets", file: path)
        guard sparsityTargets.allSatisfy({ (0...1).contains($0) }) else {
            throw malformed("ember.stats.sparsity_targets must lie between 0 and 1, found \(sparsityTargets.prefix(8))")
        }
        /// The F32 tensor `name` of `count` elements, each finite (and non-negative for counts).
        func floats(_ name: String, _ count: Int, nonNegative: Bool = false) throws -> [Float] {
            guard let info = file.tensorInfo(name), info.type == .f32, info.elementCount == count else {
                throw malformed("tensor \(name) missing or not F32 with \(count) elements")
            }
            let values = Array(UnsafeBufferPointer(start: file.data(of: info).assumingMemoryBound(to: Float.self), count: count))
            if let bad = FiniteValues.firstNonFinite(values) {
                throw GGUFError.nonFiniteValue(path: path, tensor: name, index: bad)
            }
            if nonNegative, let negative = values.firstIndex(where: { $0 < 0 }) {
                throw malformed("tensor \(name) holds a negative count (\(values[negative]) at element \(negative))")
            }
            return values
        }
        let f = feedForwardLength
        let countsPerLayer = try ReaderLimits.checkedProduct([f, t], what: "activation counts per layer", file: path)
        layers = try (0..<layerCount).map { l in
            let counts = try floats("blk.\(l).activation_counts", countsPerLayer, nonNegative: true)
            return Layer(gateThresholds: try floats("blk.\(l).gate_thresholds", t),
                         downThresholds: try floats("blk.\(l).down_thresholds", t),
                         counts: (0..<t).map { Array(counts[$0 * f..<($0 + 1) * f]) })
        }
    }

    public init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    public func write(to path: String) throws {
        var writer = GGUFWriter()
        writer.set("general.architecture", .string(Self.architecture))
        writer.set("ember.stats.source_model", .string(sourceModel))
        writer.set("ember.stats.corpus_sha256", .string(corpusSHA256))
        writer.set("ember.stats.tokens", .uint64(UInt64(tokens)))
        writer.set("ember.stats.activation", .string(activation))
        writer.set("ember.stats.gated", .bool(gated))
        writer.set("ember.stats.feed_forward_length", .uint32(UInt32(feedForwardLength)))
        writer.set("ember.stats.layer_count", .uint32(UInt32(layers.count)))
        writer.set("ember.stats.sparsity_targets", .array(.float32, sparsityTargets.map { .float32($0) }))
        for (l, layer) in layers.enumerated() {
            writer.addTensor("blk.\(l).gate_thresholds", dims: [layer.gateThresholds.count], floats: layer.gateThresholds)
            writer.addTensor("blk.\(l).down_thresholds", dims: [layer.downThresholds.count], floats: layer.downThresholds)
            writer.addTensor("blk.\(l).activation_counts", dims: [feedForwardLength, layer.counts.count],
                             floats: layer.counts.flatMap { $0 })
        }
        try writer.write(to: path)
    }
}

public enum SparsityError: Error, CustomStringConvertible, Equatable, LocalizedError {
    case notAStatisticsFile(path: String)
    case malformed(path: String, detail: String)
    case mismatch(String)

    public var description: String {
        switch self {
        case .notAStatisticsFile(let path): return "\(path) is not an activation statistics file (made by `ember profile`)"
        case .malformed(let path, let detail): return "\(path): \(detail)"
        case .mismatch(let detail): return detail
        }
    }

    public var errorDescription: String? { description }
}
