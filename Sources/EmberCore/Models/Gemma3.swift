import Foundation

/// Gemma 3: the llama block plus an RMS norm on each query and key head, "sandwich" norms on
/// the attention and FFN outputs before they join the residual stream, a GELU-gated FFN,
/// embeddings scaled by sqrt(d), and rotary positions on head halves. Five of every six layers
/// attend within a sliding window with rope base 10000; every sixth attends globally with the
/// file's rope (Gemma 3 technical report).
struct Gemma3: Architecture {
    static let names = ["gemma3"]

    let config: ModelConfig
    let embedding: Embedding
    let head: OutputHead
    let layers: [Layer]

    struct Layer: LayerParts {
        let attentionNorm: Norm
        let attention: Attention
        let postAttentionNorm: Norm
        let feedForwardNorm: Norm
        let feedForward: FeedForward
        let postFeedForwardNorm: Norm
    }

    init(file: GGUFFile, name: String) throws {
        let m = HyperparameterReader(file: file, architecture: name)
        let c = try ModelConfig(m, activation: try Architectures.activation(file, default: .gelu))
        let epsilon = Float(try m.float("attention.layer_norm_rms_epsilon", in: 0...1, default: 1e-6))
        let globalRope = try m.rope(layout: .halves, headDimension: c.headDimension)
        let localRope = Rope(layout: .halves, dimensions: globalRope.dimensions, base: 10_000)
        let window = try m.optionalInt("attention.sliding_window", in: ReaderLimits.contextLength.range)
        let pattern = try m.int("attention.sliding_window_pattern", in: 1...1024, default: 6)
        let t = TensorReader(file: file)
        let d = c.embeddingLength, hd = c.headDimension
        embedding = Embedding(tokens: try t.tokenEmbedding(c), scale: Float(d).squareRoot(), positions: nil, positionOffset: 0)
        head = try t.outputHead(c, norm: .rms, epsilon: epsilon)
        layers = try (0..<c.layerCount).map { l in
            let p = "blk.\(l).", w = try t.attentionProjections(layer: l, c)
            let sliding = window != nil && l % pattern < pattern - 1
            return Layer(
                attentionNorm: try t.norm(p + "attn_norm", .rms, count: d, epsilon: epsilon),
                attention: Attention(query: w.query, key: w.key, value: w.value,
                                     queryNorm: try t.norm(p + "attn_q_norm", .rms, count: hd, epsilon: epsilon),
                                     keyNorm: try t.norm(p + "attn_k_norm", .rms, count: hd, epsilon: epsilon),
                                     rope: sliding ? localRope : globalRope, window: sliding ? window : nil,
                                     scale: 1 / Float(hd).squareRoot(), output: w.output),
                postAttentionNorm: try t.norm(p + "post_attention_norm", .rms, count: d, epsilon: epsilon),
                feedForwardNorm: try t.norm(p + "ffn_norm", .rms, count: d, epsilon: epsilon),
                feedForward: try t.feedForward(layer: l, c),
                postFeedForwardNorm: try t.norm(p + "post_ffw_norm", .rms, count: d, epsilon: epsilon))
        }
        config = c
    }

    func block(_ l: Int, _ p: ForwardPass) {
        let w = layers[l]
        p.norm(w.attentionNorm, p.x, into: p.normed)
        p.attention(w.attention, layer: l, input: p.normed, into: p.projected)
        p.norm(w.postAttentionNorm, p.projected, into: p.projected)
        p.addResidual(p.projected)

        p.norm(w.feedForwardNorm, p.x, into: p.normed)
        p.feedForward(w.feedForward, layer: l, input: p.normed, into: p.projected)
        p.norm(w.postFeedForwardNorm, p.projected, into: p.projected)
        p.addResidual(p.projected)
    }
}
