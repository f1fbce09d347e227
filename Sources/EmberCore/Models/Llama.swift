import Foundation

/// Llama 2/3, Mistral, SmolLM2, Ember's synthetic models and the ReLU LLaMAs (ReluLLaMA,
/// ProSparse-Llama-2): pre-norm attention with rotary positions on adjacent pairs (llama GGUF
/// files permute the Q and K rows for it) and grouped kv heads, then a pre-norm gated FFN:
/// SiLU, or ReGLU, relu(gate) · up, for ReLU-family files (PowerInfer's `PWRI` files, or
/// `ember.ffn_activation = relu`). Mistral v0.1's sliding window covers every layer.
struct Llama: Architecture {
    static let names = ["llama", "mistral"]

    let config: ModelConfig
    let embedding: Embedding
    let head: OutputHead
    let layers: [PreNormLayer]

    init(file: GGUFFile, name: String) throws {
        // PowerInfer runs its llama files with ReGLU (its LLM_FFN_RELU with a parallel gate).
        try self.init(file: file, name: name,
                      activation: try Architectures.activation(file, default: file.flavor == .powerInfer ? .relu : .silu))
    }

    /// The llama tensors of `file` with the FFN activation `activation` (Bamboo: dReLU).
    init(file: GGUFFile, name: String, activation: VectorKernels.Activation) throws {
        let m = HyperparameterReader(file: file, architecture: name)
        let c = try ModelConfig(m, activation: activation)
        let epsilon = Float(try m.float("attention.layer_norm_rms_epsilon", in: 0...1, default: 1e-5))
        let rope = try m.rope(layout: .adjacent, headDimension: c.headDimension)
        let window = try m.optionalInt("attention.sliding_window", in: ReaderLimits.contextLength.range)
        let t = TensorReader(file: file)
        let d = c.embeddingLength
        embedding = Embedding(tokens: try t.tokenEmbedding(c), scale: 1, positions: nil, positionOffset: 0)
        head = try t.outputHead(c, norm: .rms, epsilon: epsilon)
        layers = try (0..<c.layerCount).map { l in
            let w = try t.attentionProjections(layer: l, c)
            return PreNormLayer(
                attentionNorm: try t.norm("blk.\(l).attn_norm", .rms, count: d, epsilon: epsilon),
                attention: Attention(query: w.query, key: w.key, value: w.value, queryNorm: nil, keyNorm: nil, rope: rope,
                                     window: window, scale: 1 / Float(c.headDimension).squareRoot(), output: w.output),
                feedForwardNorm: try t.norm("blk.\(l).ffn_norm", .rms, count: d, epsilon: epsilon),
                feedForward: try t.feedForward(layer: l, c))
        }
        config = c
    }

    func block(_ l: Int, _ p: ForwardPass) { layers[l].run(layer: l, p) }
}
