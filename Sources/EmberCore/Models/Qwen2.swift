import Foundation

/// Qwen2 / Qwen2.5: the llama block with biases on the q, k and v projections, and rotary
/// positions on the two halves of each head (NeoX style).
struct Qwen2: Architecture {
    static let names = ["qwen2"]

    let config: ModelConfig
    let embedding: Embedding
    let head: OutputHead
    let layers: [PreNormLayer]

    init(file: GGUFFile, name: String) throws {
        let m = HyperparameterReader(file: file, architecture: name)
        let c = try ModelConfig(m, activation: try Architectures.activation(file, default: .silu))
        let epsilon = Float(try m.float("attention.layer_norm_rms_epsilon", in: 0...1, default: 1e-6))
        let rope = try m.rope(layout: .halves, headDimension: c.headDimension)
        let t = TensorReader(file: file)
        let d = c.embeddingLength
        embedding = Embedding(tokens: try t.tokenEmbedding(c), scale: 1, positions: nil, positionOffset: 0)
        head = try t.outputHead(c, norm: .rms, epsilon: epsilon)
        layers = try (0..<c.layerCount).map { l in
            let w = try t.attentionProjections(layer: l, c, bias: .required)
            return PreNormLayer(
                attentionNorm: try t.norm("blk.\(l).attn_norm", .rms, count: d, epsilon: epsilon),
                attention: Attention(query: w.query, key: w.key, value: w.value, queryNorm: nil, keyNorm: nil, rope: rope,
                                     window: nil, scale: 1 / Float(c.headDimension).squareRoot(), output: w.output),
                feedForwardNorm: try t.norm("blk.\(l).ffn_norm", .rms, count: d, epsilon: epsilon),
                feedForward: try t.feedForward(layer: l, c))
        }
        config = c
    }

    func block(_ l: Int, _ p: ForwardPass) { layers[l].run(layer: l, p) }
}
