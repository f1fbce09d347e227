import Foundation

/// Falcon (7B, 40B, 180B; PowerInfer's ReluFalcon): LayerNorms with biases, a fused `attn_qkv`
/// whose rows are all query heads, then all key heads, then all value heads (multi-query for 7B,
/// grouped kv for 40B), rotary positions on head halves (NeoX style), and a **parallel**
/// residual: attention and FFN both read the layer input and both add to it. The FFN has no
/// gate: GELU (tanh form, as llama.cpp computes it) in llama.cpp's files, ReLU in PowerInfer's.
///
/// The 40B layout has a second norm per layer, `attn_norm_2`, which feeds the attention, while
/// `attn_norm` feeds the FFN (llama.cpp maps HF's `ln_attn` to `attn_norm_2` and `ln_mlp` to
/// `attn_norm`). A layer is of that layout exactly when `blk.N.attn_norm_2.weight` exists; in
/// the 7B layout `attn_norm` feeds both.
struct Falcon: Architecture {
    static let names = ["falcon"]

    let config: ModelConfig
    let embedding: Embedding
    let head: OutputHead
    let layers: [Layer]

    struct Layer: LayerParts {
        /// The FFN's input norm, and the attention's too when there is no `attentionNorm`.
        let norm: Norm
        /// The 40B layout's attention norm (`attn_norm_2`).
        let attentionNorm: Norm?
        let attention: Attention
        let feedForward: FeedForward
    }

    init(file: GGUFFile, name: String) throws {
        let m = HyperparameterReader(file: file, architecture: name)
        let activation = try Architectures.activation(file, default: file.flavor == .powerInfer ? .relu : .gelu)
        let c = try ModelConfig(m, activation: activation)
        let epsilon = Float(try m.float("attention.layer_norm_epsilon", in: 0...1, default: 1e-5))
        let rope = try m.rope(layout: .halves, headDimension: c.headDimension)
        let t = TensorReader(file: file)
        let d = c.embeddingLength
        embedding = Embedding(tokens: try t.tokenEmbedding(c), scale: 1, positions: nil, positionOffset: 0)
        head = try t.outputHead(c, norm: .layer, epsilon: epsilon, bias: .required)
        layers = try (0..<c.layerCount).map { l in
            let p = "blk.\(l)."
            let qkv = try t.split(p + "attn_qkv", parts: [c.queryLength, c.kvLength, c.valueLength], columns: d, bias: .optional)
            return Layer(
                norm: try t.norm(p + "attn_norm", .layer, count: d, epsilon: epsilon, bias: .required),
                attentionNorm: t.has(p + "attn_norm_2.weight")
                    ? try t.norm(p + "attn_norm_2", .layer, count: d, epsilon: epsilon, bias: .optional) : nil,
                attention: Attention(query: qkv[0], key: qkv[1], value: qkv[2], queryNorm: nil, keyNorm: nil, rope: rope,
                                     window: nil, scale: 1 / Float(c.headDimension).squareRoot(),
                                     output: try t.linear(p + "attn_output", rows: d, columns: c.attentionOutputLength,
                                                          bias: .optional)),
                feedForward: try t.feedForward(layer: l, c, gated: false, bias: .optional))
        }
        config = c
    }

    func block(_ l: Int, _ p: ForwardPass) {
        let w = layers[l]
        if let attentionNorm = w.attentionNorm {
            p.norm(attentionNorm, p.x, into: p.normed)
            p.attention(w.attention, layer: l, input: p.normed, into: p.projected)
            p.norm(w.norm, p.x, into: p.normed)
        } else {
            p.norm(w.norm, p.x, into: p.normed)
            p.attention(w.attention, layer: l, input: p.normed, into: p.projected)
        }
        // x is still the layer input here: what PowerInfer's predictors read for Falcon.
        p.feedForward(w.feedForward, layer: l, input: p.normed, into: p.parallel)
        p.addResidual(p.projected)
        p.addResidual(p.parallel)
    }
}
