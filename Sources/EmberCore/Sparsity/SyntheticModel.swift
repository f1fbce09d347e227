import CEmberKernels
import Foundation

/// Synthetic ReLU-family models with planted activation sparsity, for measuring speed at sizes no
/// downloadable ReLU model offers here: llama (ReGLU), bamboo (dReLU), falcon (parallel
/// attention and FFN, ReLU without gate) and opt (learned positions, biases, ReLU without gate).
/// The weights are random, so the text is noise, but the compute is the family's real block and
/// the FFN neurons really fire with a planted power-law frequency at the requested sparsity.
///
/// How the sparsity is planted:
/// - Residual channels 0..<32 (exactly one quant block) hold the same constant `a` in every token
///   embedding. The attention output and down projections write zeros there and nothing else
///   writes to the residual stream, so the block stays constant through all layers.
/// - Every other channel is random with variance about 1; `a` is chosen so the constant block
///   carries as much energy as the rest, so the RMS norm keeps both at a fixed ratio.
///   (LayerNorm families: the norm removes the mean, about 32a/d, the same for every token up to
///   a fluctuation of 1/√d, so the block stays nearly constant.)
/// - Gate row i (ungated families: up row i) has the same weight β_i on all 32 constant
///   channels: a per-neuron bias. The rest
///   of the pre-activation is, over tokens, a sum of many independent terms, so normal with
///   std σ_i = ‖w_i,rest‖·√V / rms (V: variance of a residual channel). Neuron i then fires
///   (relu(gate) > 0) with probability Φ(bias/σ_i); setting the bias to σ_i·Φ⁻¹(p_i) gives
///   β_i = Φ⁻¹(p_i)·‖w_i,rest‖·√V / (32·a), where the rms cancels.
/// - p_i follows a power law over neuron rank, p(r) ∝ ((r + ½)/F)^-1.2, clipped to
///   [1e-4, 0.98] and scaled so its mean is 1 − sparsity; ranks are shuffled per layer.
///   With exponent 1.2, at 90 % sparsity 28 % of the neurons carry 80 % of the activations
///   (PowerInfer measured 26 % on OPT-30B).
/// - Which neurons fire depends on the token, through a planted low-rank structure a predictor
///   can learn: the random part of gate row i is √ρ·(a mix of `inputRank` random basis rows
///   shared by the layer) + √(1−ρ)·(its own noise), ρ = `predictableShare`. So whether neuron i
///   fires is, up to that noise, a linear function of inputRank directions of the residual
///   stream (the norm scales both sides of the bias test alike). Real models have such
///   structure (predictors work on them); without it every neuron would fire independently of
///   the input and no predictor could beat the planted rates. `inputRank` 0 turns it off.
///   The variance of each weight, hence the planted rates, is the same either way.
/// - Attention and FFN outputs are scaled to add only a little variance per layer (2 % of the
///   embedding's over the whole model, each), so V stays near 1; the small growth is accounted for.
/// - OPT's biases are small (they exercise the bias paths without moving the planted rates), and
///   its position rows are zero on the constant block.
/// Only block sizes of at most 32 keep the constant block one quant block, so K-quants are left out.
public enum SyntheticModel {
    /// The families a synthetic model can be of.
    public enum Family: String, Sendable, CaseIterable {
        case llama, bamboo, falcon, opt

        /// Its FFN activation: ReGLU, dReLU, or ReLU without a gate.
        var activation: VectorKernels.Activation { self == .bamboo ? .drelu : .relu }
        var gated: Bool { self == .llama || self == .bamboo }
    }

    /// Model shapes; the large ones are Llama 2's, and each family's own 7B.
    public struct Shape: Sendable, Equatable {
        public let name: String
        public let embeddingLength: Int
        public let feedForwardLength: Int
        public let layerCount: Int
        public let headCount: Int
        public let kvHeadCount: Int

        public static let tiny = Shape(name: "tiny", embeddingLength: 256, feedForwardLength: 1024, layerCount: 4,
                                       headCount: 4, kvHeadCount: 2)
        public static let small = Shape(name: "small", embeddingLength: 1024, feedForwardLength: 2816, layerCount: 8,
                                        headCount: 16, kvHeadCount: 16)
        public static let llama7B = Shape(name: "7b", embeddingLength: 4096, feedForwardLength: 11008, layerCount: 32,
                                          headCount: 32, kvHeadCount: 32)
        public static let llama13B = Shape(name: "13b", embeddingLength: 5120, feedForwardLength: 13824, layerCount: 40,
                                           headCount: 40, kvHeadCount: 40)
        public static let all = [tiny, small, llama7B, llama13B]
        /// Bamboo-7B (Mistral 7B's shape), Falcon-7B (multi-query), OPT-6.7B.
        public static let bamboo7B = Shape(name: "7b", embeddingLength: 4096, feedForwardLength: 14336, layerCount: 32,
                                           headCount: 32, kvHeadCount: 8)
        public static let falcon7B = Shape(name: "7b", embeddingLength: 4544, feedForwardLength: 18176, layerCount: 32,
                                           headCount: 71, kvHeadCount: 1)
        public static let opt7B = Shape(name: "7b", embeddingLength: 4096, feedForwardLength: 16384, layerCount: 32,
                                        headCount: 32, kvHeadCount: 32)

        public static func named(_ name: String) -> Shape? { all.first { $0.name == name.lowercased() } }

        /// The shape `name` for `family`: "7b" is the family's own 7B model.
        public static func named(_ name: String, family: Family) -> Shape? {
            guard name.lowercased() == "7b" else {
                // OPT has no grouped kv heads.
                return named(name).map { family == .opt ? $0.withKVHeads($0.headCount) : $0 }
            }
            switch family {
            case .llama: return llama7B
            case .bamboo: return bamboo7B
            case .falcon: return falcon7B
            case .opt: return opt7B
            }
        }

        func withKVHeads(_ count: Int) -> Shape {
            Shape(name: name, embeddingLength: embeddingLength, feedForwardLength: feedForwardLength, layerCount: layerCount,
                  headCount: headCount, kvHeadCount: count)
        }

        public var headDimension: Int { embeddingLength / headCount }
    }

    /// What to generate.
    public struct Options: Sendable {
        public var shape: Shape
        /// The average fraction of FFN neurons that are exactly zero for a token.
        public var sparsity: Double
        /// Type of every matrix (norms are F32).
        public var type: TensorType
        public var seed: UInt64
        public var contextLength: Int
        /// Rank of the input structure that decides which neurons fire (0: none).
        public var inputRank: Int
        public var family: Family

        public init(shape: Shape, sparsity: Double = 0.9, type: TensorType = .q4_0, seed: UInt64 = 0,
                    contextLength: Int = 4096, inputRank: Int = 16, family: Family = .llama) {
            self.family = family
            self.shape = shape
            self.sparsity = sparsity
            self.type = type
            self.seed = seed
            self.contextLength = contextLength
            self.inputRank = inputRank
        }
    }

    /// Matrix types: those whose quant block spans at most the 32 constant channels.
    public static let supportedTypes: [TensorType] = [.f32, .f16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0]
    /// Sparsities the clipped power law can reach.
    public static let sparsityRange: ClosedRange<Double> = 0.05...0.995
    /// The firing-probability curve: exponent and clipping bounds.
    public static let powerLawExponent = 1.2
    static let probabilityBounds = 1e-4...0.98
    /// Residual channels 0..<constantWidth are the constant "bias" block.
    static let constantWidth = 32
    /// Variance each of attention and FFN adds to a residual channel over the whole model.
    static let addedVariance = 0.02
    /// Share of a gate row's random variance that lies in the layer's low-rank input structure.
    static let predictableShare = 0.95
    /// Input ranks allowed (the structure is generated per row: cost grows with the rank).
    public static let inputRankRange = 0...256

    public enum SyntheticModelError: Error, CustomStringConvertible, Equatable {
        case unsupportedType(TensorType)
        case sparsityOutOfRange(Double)
        case badShape(String)

        public var description: String {
            switch self {
            case .unsupportedType(let type):
                return "type \(type) is not supported for synthetic models (use one of "
                    + SyntheticModel.supportedTypes.map { $0.description.lowercased() }.joined(separator: ", ") + ")"
            case .sparsityOutOfRange(let value):
                return "sparsity \(value) is outside \(SyntheticModel.sparsityRange.lowerBound)...\(SyntheticModel.sparsityRange.upperBound)"
            case .badShape(let reason):
                return "unusable shape: \(reason)"
            }
        }
    }

    public static func validate(_ options: Options) throws {
        guard supportedTypes.contains(options.type) else { throw SyntheticModelError.unsupportedType(options.type) }
        guard options.sparsity.isFinite, sparsityRange.contains(options.sparsity) else {
            throw SyntheticModelError.sparsityOutOfRange(options.sparsity)
        }
        guard inputRankRange.contains(options.inputRank) else {
            throw SyntheticModelError.badShape("input rank \(options.inputRank) is outside \(inputRankRange)")
        }
        let s = options.shape
        guard s.embeddingLength % 32 == 0, s.embeddingLength > constantWidth, s.feedForwardLength % 32 == 0,
              s.layerCount > 0, s.headCount > 0, s.kvHeadCount > 0, s.headCount % s.kvHeadCount == 0,
              s.embeddingLength % s.headCount == 0, s.headDimension % 32 == 0 else {
            throw SyntheticModelError.badShape("\(s)")
        }
        // OPT has no grouped kv heads.
        guard options.family != .opt || s.kvHeadCount == s.headCount else {
            throw SyntheticModelError.badShape("OPT has as many kv heads as heads, not \(s.kvHeadCount) of \(s.headCount)")
        }
    }

    // MARK: Planted frequencies

    /// Firing probabilities of `neurons` neurons, hottest first: the clipped power law whose
    /// mean is 1 − sparsity.
    public static func firingProbabilities(neurons: Int, sparsity: Double) -> [Double] {
        let target = 1 - sparsity
        func curve(_ scale: Double) -> [Double] {
            (0..<neurons).map { r in
                let u = (Double(r) + 0.5) / Double(neurons)
                return min(max(scale * pow(u, -powerLawExponent), probabilityBounds.lowerBound), probabilityBounds.upperBound)
            }
        }
        // The mean grows with the scale: bisect on its logarithm.
        var low = -40.0, high = 5.0
        for _ in 0..<100 {
            let mid = (low + high) / 2
            let mean = curve(exp(mid)).reduce(0, +) / Double(neurons)
            if mean < target { low = mid } else { high = mid }
        }
        return curve(exp((low + high) / 2))
    }

    /// Φ⁻¹(p) for the standard normal, by bisection on erfc (called once per neuron).
    static func normalQuantile(_ p: Double) -> Double {
        var low = -12.0, high = 12.0
        for _ in 0..<64 {
            let mid = (low + high) / 2
            if 0.5 * erfc(-mid / 2.0.squareRoot()) < p { low = mid } else { high = mid }
        }
        return (low + high) / 2
    }

    /// E[relu(g)²] for g ~ N(z, 1).
    static func meanSquaredReLU(z: Double) -> Double {
        let phi = exp(-z * z / 2) / (2 * Double.pi).squareRoot()
        let cdf = 0.5 * erfc(-z / 2.0.squareRoot())
        return (z * z + 1) * cdf + z * phi
    }

    /// Per-layer probabilities in neuron order: the curve, ranks shuffled by a seeded permutation.
    public static func layerProbabilities(_ options: Options, layer: Int) -> [Double] {
        layerProbabilities(options, layer: layer,
                           curve: firingProbabilities(neurons: options.shape.feedForwardLength, sparsity: options.sparsity))
    }

    /// The same, given the curve (computed once per model).
    static func layerProbabilities(_ options: Options, layer: Int, curve sorted: [Double]) -> [Double] {
        var rng = RowRandom(seed: options.seed, stream: "blk.\(layer).ffn_rank", row: 0)
        var order = Array(0..<sorted.count)
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            order.swapAt(i, rng.below(i + 1))
        }
        var p = [Double](repeating: 0, count: sorted.count)
        for (rank, neuron) in order.enumerated() { p[neuron] = sorted[rank] }
        return p
    }

    /// The layer's `inputRank` basis rows (unit normal entries, `d` floats each), row-major.
    static func inputBasis(_ options: Options, layer: Int) -> [Float] {
        let d = options.shape.embeddingLength
        var basis = [Float](repeating: 0, count: options.inputRank * d)
        for i in 0..<options.inputRank {
            var rng = RowRandom(seed: options.seed, stream: "blk.\(layer).ffn_gate.input_basis", row: i)
            for j in 0..<d { basis[i * d + j] = rng.normal() }
        }
        return basis
    }

    // MARK: Writing

    /// Writes the model to `path` (atomically), generating each tensor on `pool`'s threads as it
    /// is written. `tokenizer` supplies every `tokenizer.*` key (SmolLM2's vocabulary).
    static func write(_ options: Options, tokenizer: GGUFFile, to path: String, pool: ThreadPool,
                      progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        try makeWriter(options, tokenizer: tokenizer, pool: pool).write(to: path, progress: progress)
    }

    /// Writes the model to `path` (atomically) on `threads` threads, with the vocabulary of the
    /// GGUF model at `tokenizerPath` (SmolLM2's). `progress(bytesDone, bytes)` follows the writing.
    public static func write(_ options: Options, tokenizerFrom tokenizerPath: String, to path: String, threads: Int,
                             progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        try write(options, tokenizer: try GGUFFile(path: tokenizerPath), to: path, pool: ThreadPool(threads: threads),
                  progress: progress)
    }

    /// The writer, with metadata set and tensors pending (generated only when written).
    static func makeWriter(_ options: Options, tokenizer: GGUFFile, pool: ThreadPool) throws -> GGUFWriter {
        try validate(options)
        guard let vocabulary = try tokenizer.stringArray("tokenizer.ggml.tokens")?.count, vocabulary > 0 else {
            throw GGUFError.writeFailed(path: tokenizer.path, reason: "it has no tokenizer.ggml.tokens to copy")
        }
        let s = options.shape, d = s.embeddingLength, ff = s.feedForwardLength, L = s.layerCount
        let type = options.type, seed = options.seed, family = options.family
        let arch = family.rawValue
        let kvLength = s.kvHeadCount * s.headDimension

        var w = GGUFWriter()
        w.set("general.architecture", .string(arch))
        w.set("general.name", .string("ember-synth-\(family == .llama ? "" : arch + "-")\(s.name)-relu-s\(String(format: "%.2f", options.sparsity))"))
        w.set("general.description", .string(description(options)))
        w.set("general.file_type", .uint32(fileType(type)))
        w.set("general.quantization_version", .uint32(2))
        // OPT's 2048 learned positions and the 2 offset rows before them: PowerInfer's converter
        // writes 2050 as the context, and its loader wants exactly that many rows.
        let contextKey = family == .opt ? 2048 + OPT.positionOffset : options.contextLength
        w.set("\(arch).context_length", .uint32(UInt32(contextKey)))
        w.set("\(arch).embedding_length", .uint32(UInt32(d)))
        w.set("\(arch).block_count", .uint32(UInt32(L)))
        w.set("\(arch).feed_forward_length", .uint32(UInt32(ff)))
        w.set("\(arch).attention.head_count", .uint32(UInt32(s.headCount)))
        switch family {
        case .llama, .bamboo:
            w.set("\(arch).attention.head_count_kv", .uint32(UInt32(s.kvHeadCount)))
            w.set("\(arch).rope.dimension_count", .uint32(UInt32(s.headDimension)))
            w.set("\(arch).rope.freq_base", .float32(10_000))
            w.set("\(arch).attention.layer_norm_rms_epsilon", .float32(1e-5))
        case .falcon:
            w.set("falcon.attention.head_count_kv", .uint32(UInt32(s.kvHeadCount)))
            w.set("falcon.attention.layer_norm_epsilon", .float32(1e-5))
        case .opt:
            w.set("opt.attention.layer_norm_epsilon", .float32(1e-5))
        }
        w.set("\(arch).vocab_size", .uint32(UInt32(vocabulary)))
        // llama and falcon files are SiLU and GELU unless they say otherwise.
        if family == .llama || family == .falcon { w.set("ember.ffn_activation", .string("relu")) }
        w.set("ember.synthetic.sparsity", .float32(Float(options.sparsity)))
        w.set("ember.synthetic.power_law_exponent", .float32(Float(powerLawExponent)))
        w.set("ember.synthetic.seed", .uint64(seed))
        w.set("ember.synthetic.input_rank", .uint32(UInt32(options.inputRank)))
        for key in tokenizer.metadataKeys where key.hasPrefix("tokenizer.") {
            if let value = tokenizer.value(key) { w.set(key, value) }
        }

        let k = constantWidth
        // The constant block carries as much energy as the (d − k) unit-variance channels.
        let a = Float(Double(d - k) / Double(k)).squareRoot()
        let sigma = 1 / Float(d).squareRoot()
        // What the block holds after the norm's mean removal (LayerNorm families), before scaling.
        let blockValue = family == .falcon || family == .opt ? Double(a) * (1 - Double(k) / Double(d)) : Double(a)
        // After the norm, a random channel has variance about V·d / ((d − k)(V + 1)) ≈ ½, so a
        // row of std `sigma` gives outputs of variance about ½ (value vectors, up, gate rest).
        let normalisedVariance = 0.5
        let attentionScale = Float((addedVariance / Double(L) / (Double(d) * normalisedVariance)).squareRoot())
        // FFN output variance = σ_d² · Σ_i E[act_i²]: E[relu(g_i)²] (of variance ½) times E[u_i²]
        // (½; dReLU: E[relu(u)²] = ¼; no gate: no factor). The sum depends only on the (sorted)
        // probabilities, the same for every layer.
        let curve = firingProbabilities(neurons: ff, sparsity: options.sparsity)
        let upFactor = family == .llama ? normalisedVariance : family == .bamboo ? normalisedVariance / 2 : 1
        let ffnEnergy = curve.reduce(0) { $0 + meanSquaredReLU(z: normalQuantile($1)) } * normalisedVariance * upFactor
        let downScale = Float((addedVariance / Double(L) / ffnEnergy).squareRoot())

        func matrix(_ name: String, rows: Int, columns: Int,
                    _ row: @escaping (_ r: Int, _ rng: inout RowRandom, _ x: UnsafeMutableBufferPointer<Float>) -> Void) {
            w.addTensor(name, type: type, dims: [columns, rows]) { buffer in
                fillRows(buffer, rows: rows, columns: columns, type: type, pool: pool) { r, x, out in
                    var rng = RowRandom(seed: seed, stream: name, row: r)
                    row(r, &rng, x)
                    quantize(type, x, out)
                }
            }
        }
        func ones(_ name: String) {
            w.addTensor(name, dims: [d], floats: [Float](repeating: 1, count: d))
        }
        /// A norm: RMS (weight only), or LayerNorm with a zero bias.
        func norm(_ prefix: String) {
            ones(prefix + ".weight")
            if family == .falcon || family == .opt { w.addTensor(prefix + ".bias", dims: [d], floats: [Float](repeating: 0, count: d)) }
        }
        /// A small random bias (OPT), zero on the constant block when `keepsBlock`.
        func bias(_ name: String, count: Int, scale: Float, keepsBlock: Bool = false) {
            var rng = RowRandom(seed: seed, stream: name, row: 0)
            w.addTensor(name, dims: [count], floats: (0..<count).map { keepsBlock && $0 < k ? 0 : scale * rng.normal() })
        }
        /// Random N(0, scale²) weights, with `zeroColumns` left at zero.
        func random(_ scale: Float, zeroColumns: Range<Int> = 0..<0) -> (Int, inout RowRandom, UnsafeMutableBufferPointer<Float>) -> Void {
            { _, rng, x in
                for j in x.indices { x[j] = zeroColumns.contains(j) ? 0 : scale * rng.normal() }
            }
        }

        matrix("token_embd.weight", rows: vocabulary, columns: d) { _, rng, x in
            for j in x.indices { x[j] = j < k ? a : rng.normal() }
        }
        if family == .opt {
            // Learned positions: small next to the unit-variance embedding, zero on the block.
            matrix("position_embd.weight", rows: contextKey, columns: d, random(0.1, zeroColumns: 0..<k))
        }
        for l in 0..<L {
            let n = "blk.\(l)."
            norm(n + "attn_norm")
            if family == .falcon {
                // Fused: all query rows, then key rows, then value rows (no constant in values).
                matrix(n + "attn_qkv.weight", rows: d + 2 * kvLength, columns: d) { r, rng, x in
                    for j in x.indices { x[j] = r >= d + kvLength && j < k ? 0 : sigma * rng.normal() }
                }
            } else {
                matrix(n + "attn_q.weight", rows: d, columns: d, random(sigma))
                matrix(n + "attn_k.weight", rows: kvLength, columns: d, random(sigma))
                // No constant offset in values, so attention adds zero-mean noise only.
                matrix(n + "attn_v.weight", rows: kvLength, columns: d, random(sigma, zeroColumns: 0..<k))
            }
            if family == .opt {
                for (name, count) in [("attn_q", d), ("attn_k", kvLength), ("attn_v", kvLength)] {
                    bias(n + name + ".bias", count: count, scale: 0.01, keepsBlock: name == "attn_v")
                }
            }
            matrix(n + "attn_output.weight", rows: d, columns: d) { r, rng, x in
                for j in x.indices { x[j] = r < k ? 0 : attentionScale * rng.normal() }
            }
            if family == .opt { bias(n + "attn_output.bias", count: d, scale: 0.01, keepsBlock: true) }
            if family != .falcon { norm(n + "ffn_norm") }
            // Variance of a residual channel entering this layer's FFN: the embedding's 1 plus
            // what earlier blocks (and this layer's attention) added.
            let variance = 1 + addedVariance * Double(2 * l + 1) / Double(L)
            // The planted rows: the gate's, or the up projection's in families without a gate.
            let plantedName = n + (family.gated ? "ffn_gate.weight" : "ffn_up.weight")
            w.addTensor(plantedName, type: type, dims: [d, ff]) { buffer in
                let p = layerProbabilities(options, layer: l, curve: curve)
                let basis = inputBasis(options, layer: l)
                let rank = options.inputRank
                // Unit-variance entries: √ρ·Σ_j c_j·b_j/√rank + √(1−ρ)·noise, c_j and b_j unit normals.
                let structured = rank == 0 ? 0 : Float((predictableShare / Double(rank)).squareRoot())
                let noise = rank == 0 ? 1 : Float((1 - predictableShare).squareRoot())
                fillRows(buffer, rows: ff, columns: d, type: type, pool: pool) { r, x, out in
                    var rng = RowRandom(seed: seed, stream: plantedName, row: r)
                    for j in x.indices { x[j] = j < k ? 0 : sigma * noise * rng.normal() }
                    basis.withUnsafeBufferPointer { b in
                        for i in 0..<rank {
                            let c = sigma * structured * rng.normal()
                            let row = b.baseAddress! + i * d
                            for j in k..<d { x[j] += c * row[j] }
                        }
                    }
                    quantize(type, x, out)
                    // The bias uses the norm of the weights as stored, quantization included.
                    ember_dequantize_row(Int32(type.rawValue), out.baseAddress, x.baseAddress, Int64(d))
                    var squares = 0.0
                    for j in k..<d { squares += Double(x[j]) * Double(x[j]) }
                    let beta = normalQuantile(p[r]) * squares.squareRoot() * variance.squareRoot() / (Double(k) * blockValue)
                    for j in 0..<k { x[j] = Float(beta) }
                    ember_quantize_row(Int32(type.rawValue), x.baseAddress, out.baseAddress, Int64(k))
                }
            }
            if family.gated { matrix(n + "ffn_up.weight", rows: ff, columns: d, random(sigma, zeroColumns: 0..<k)) }
            // A small up bias moves each planted rate by well under a percent (its σ is 1/20 of
            // the pre-activation's).
            if family == .opt { bias(n + "ffn_up.bias", count: ff, scale: 0.05 * (Float(normalisedVariance).squareRoot())) }
            matrix(n + "ffn_down.weight", rows: d, columns: ff) { r, rng, x in
                for j in x.indices { x[j] = r < k ? 0 : downScale * rng.normal() }
            }
            if family == .opt { bias(n + "ffn_down.bias", count: d, scale: 0.01, keepsBlock: true) }
        }
        norm("output_norm")
        // The constant block would add the same offset to a token's logit at every step (OPT's
        // head is the embedding itself: the offset is the same for every token, so harmless).
        if family != .opt { matrix("output.weight", rows: vocabulary, columns: d, random(sigma, zeroColumns: 0..<k)) }
        return w
    }

    /// Predictors with a margin for a synthetic model: in every layer they keep the `share` of
    /// neurons with the highest planted rates, whatever the token, with every score at least
    /// `margin` minus a small input-dependent part away from the threshold 0. Rank 0 reads the
    /// residual's constant block (the same in every token and layer, so relu(fc1₀ · x) = 1) and
    /// its fc2 column is +margin for kept neurons, −margin for the rest; ranks 1... are random
    /// and small (scores move by about 0.05 against a margin of 8), so the predictors' compute
    /// is real. Two engines that compute the scores correctly keep exactly the same neurons, so
    /// their outputs can be compared exactly (the design of Fixtures/powerinfer's predictors).
    public static func marginPredictors(_ options: Options, share: Double = 0.3, rank: Int = 16,
                                        margin: Float = 8) throws -> PredictorFile {
        try validate(options)
        let s = options.shape, d = s.embeddingLength, f = s.feedForwardLength, k = constantWidth
        let a = Float(Double(d - k) / Double(k)).squareRoot()
        let curve = firingProbabilities(neurons: f, sparsity: options.sparsity)
        var fc1: [[Float]?] = [], fc2: [[Float]?] = []
        for l in 0..<s.layerCount {
            let p = layerProbabilities(options, layer: l, curve: curve)
            let kept = Set(p.indices.sorted { p[$0] != p[$1] ? p[$0] > p[$1] : $0 < $1 }.prefix(Int((share * Double(f)).rounded())))
            var rng = RowRandom(seed: options.seed, stream: "blk.\(l).margin_predictor", row: 0)
            var w1 = [Float](repeating: 0, count: rank * d), w2 = [Float](repeating: 0, count: f * rank)
            for j in 0..<k { w1[j] = 1 / (Float(k) * a) }
            for i in 1..<rank { for j in k..<d { w1[i * d + j] = rng.normal() / Float(d).squareRoot() } }
            for n in 0..<f {
                w2[n * rank] = kept.contains(n) ? margin : -margin
                for i in 1..<rank { w2[n * rank + i] = 0.02 * rng.normal() }
            }
            fc1.append(w1)
            fc2.append(w2)
        }
        return PredictorFile(set: PredictorSet(fc1: fc1, fc2: fc2, ranks: Array(repeating: rank, count: s.layerCount),
                                               thresholds: Array(repeating: 0, count: s.layerCount), inputLength: d, neuronCount: f))
    }

    /// Predictors made in memory, to be written to a file.
    public struct PredictorFile {
        let set: PredictorSet

        /// Writes Ember's predictor file atomically.
        public func write(to path: String) throws { try set.write(to: path) }
    }

    /// The text stored as `general.description` and printed by `ember synth`.
    public static func description(_ options: Options) -> String {
        let ffn: String
        switch options.family {
        case .llama: ffn = "ReLU FFN (ember.ffn_activation = relu)"
        case .bamboo: ffn = "dReLU FFN, relu(gate) · relu(up), as Bamboo"
        case .falcon: ffn = "parallel attention and ReLU FFN without gate, as ReluFalcon (ember.ffn_activation = relu)"
        case .opt: ffn = "learned positions, biases, ReLU FFN without gate, as OPT"
        }
        return "Synthetic \(options.family.rawValue)-shaped model (ember synth, shape \(options.shape.name), seed \(options.seed)) "
            + "with random weights: its text is noise, but its compute and its FFN activation sparsity are real. \(ffn); "
            + String(format: "%.0f", options.sparsity * 100)
            + " % of FFN neurons are exactly zero per token on average, with power-law firing frequencies "
            + "(exponent \(powerLawExponent), ranks shuffled per layer)"
            + (options.inputRank > 0
                ? "; which neurons fire depends on the token through a planted rank-\(options.inputRank) structure"
                : "; neurons fire independently of the token")
            + (options.family == .llama || options.family == .falcon
                ? ". llama.cpp runs its FFN with \(options.family == .llama ? "SiLU" : "GELU") instead, "
                    + "which changes the values but not the speed of dense inference." : ".")
    }

    /// llama.cpp's `general.file_type` for a file whose matrices are all `type`.
    static func fileType(_ type: TensorType) -> UInt32 {
        switch type {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        default: return 0
        }
    }

    static func quantize(_ type: TensorType, _ x: UnsafeMutableBufferPointer<Float>, _ out: UnsafeMutableRawBufferPointer) {
        ember_quantize_row(Int32(type.rawValue), x.baseAddress, out.baseAddress, Int64(x.count))
    }

    /// Generates rows in parallel: `row(r, scratch, out)` fills row r's bytes `out` using the
    /// float scratch row. Rows are independent (each seeds its own generator), so the bytes do
    /// not depend on the thread count.
    static func fillRows(_ buffer: UnsafeMutableRawBufferPointer, rows: Int, columns: Int, type: TensorType, pool: ThreadPool,
                         _ row: (Int, UnsafeMutableBufferPointer<Float>, UnsafeMutableRawBufferPointer) -> Void) {
        let rowBytes = buffer.count / rows
        pool.parallelFor(rows) { range in
            let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: columns)
            defer { scratch.deallocate() }
            for r in range {
                row(r, scratch, UnsafeMutableRawBufferPointer(rebasing: buffer[r * rowBytes..<(r + 1) * rowBytes]))
            }
        }
    }
}

/// A small fast generator (SplitMix64) seeded per (model seed, tensor, row), so any row can be
/// made on any thread in any order and the file is the same byte for byte.
struct RowRandom {
    private var state: UInt64

    init(seed: UInt64, stream: String, row: Int) {
        // FNV-1a of the name: stable across runs, unlike Swift's Hasher.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in stream.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        state = Self.mix(seed ^ Self.mix(hash ^ Self.mix(UInt64(row) &+ 0x9e37_79b9_7f4a_7c15)))
    }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        return Self.mix(state)
    }

    /// Uniform in 0..<n.
    mutating func below(_ n: Int) -> Int { Int(UInt64(n).multipliedFullWidth(by: next()).high) }

    /// Approximately standard normal: the sum of four 16-bit uniforms (Irwin–Hall), rescaled to
    /// unit variance. Bounded at ±3.5σ, which is fine for weights and costs one draw.
    mutating func normal() -> Float {
        let r = next()
        let sum = (r & 0xffff) + (r >> 16 & 0xffff) + (r >> 32 & 0xffff) + (r >> 48)
        return (Float(sum) + 2) * (1 / 65536) * 1.7320508 - 2 * 1.7320508
    }
}

extension SyntheticModel.SyntheticModelError: LocalizedError {
    public var errorDescription: String? { description }
}
