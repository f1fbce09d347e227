import Foundation

/// OPT (Meta, 2022; the main family of PowerInfer's paper): pre-norm LayerNorms with biases,
/// learned position embeddings, biases on every projection, a ReLU FFN without gate, and the
/// output head tied to the token embedding. The only OPT GGUF files are PowerInfer's (llama.cpp
/// has no OPT), so Ember reads them as PowerInfer does (snapshot d3ebd7c, `build_opt`):
/// - position p reads row p + 2 of `position_embd` (OPT's offset); the context is the table's
///   rows minus 2 (PowerInfer's converter writes 2050 rows and `context_length` 2050);
/// - the LayerNorm epsilon is `opt.attention.layer_norm_epsilon`, else 0: PowerInfer reads none
///   for OPT and so uses 0, and its converter writes no key. HF's OPT uses 1e-5; on inputs of
///   unit scale the two differ by about 1e-5 relative, far below any rounding here.
struct OPT: Architecture {
    static let names = ["opt"]
    /// OPT's learned positions start at row 2 of the table.
    static let positionOffset = 2

    let config: ModelConfig
    let embedding: Embedding
    let head: OutputHead
    let layers: [PreNormLayer]

    init(file: GGUFFile, name: String) throws {
        let m = HyperparameterReader(file: file, architecture: name)
        var c = try ModelConfig(m, activation: try Architectures.activation(file, default: .relu))
        let epsilon = Float(try m.float("attention.layer_norm_epsilon", in: 0...1, default: 0))
        let t = TensorReader(file: file)
        let d = c.embeddingLength
        let positionRows = try t.rowCount("position_embd.weight", columns: d)
        guard positionRows > Self.positionOffset else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: "position_embd.weight",
                                             expected: [d, Self.positionOffset + 1], found: [d, positionRows])
        }
        c.contextLength = min(c.contextLength, positionRows - Self.positionOffset)
        embedding = Embedding(tokens: try t.tokenEmbedding(c), scale: 1,
                              positions: try t.matrix("position_embd.weight", rows: positionRows, columns: d),
                              positionOffset: Self.positionOffset)
        head = try t.outputHead(c, norm: .layer, epsilon: epsilon, bias: .required)
        layers = try (0..<c.layerCount).map { l in
            let p = "blk.\(l)."
            let w = try t.attentionProjections(layer: l, c, bias: .required, outputBias: .required)
            return PreNormLayer(
                attentionNorm: try t.norm(p + "attn_norm", .layer, count: d, epsilon: epsilon, bias: .required),
                attention: Attention(query: w.query, key: w.key, value: w.value, queryNorm: nil, keyNorm: nil, rope: nil,
                                     window: nil, scale: 1 / Float(c.headDimension).squareRoot(), output: w.output),
                feedForwardNorm: try t.norm(p + "ffn_norm", .layer, count: d, epsilon: epsilon, bias: .required),
                feedForward: try t.feedForward(layer: l, c, gated: false, bias: .required))
        }
        config = c
    }

    func block(_ l: Int, _ p: ForwardPass) { layers[l].run(layer: l, p) }
}
