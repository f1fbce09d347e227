/// The Gemma 3 block: like llama, plus RMS norms on each q and k head, and "sandwich" norms
/// on the attention and FFN outputs before they join the residual stream. The FFN is
/// GELU-gated; embeddings are scaled by sqrt(d); five of every six layers attend within a
/// sliding window (see ModelConfig).
enum Gemma3 {
    static func block(_ w: LayerWeights, layer: Int, pass p: ForwardPass, cache: KVCache) {
        p.rmsNorm(p.x, w.attentionNorm, into: p.normed)
        p.linear(p.normed, [(w.query, p.query), (w.key, p.key), (w.value, p.value)])
        p.headNorm(p.query, w.queryNorm, headLength: p.config.headDimension)
        p.headNorm(p.key, w.keyNorm, headLength: p.config.headDimension)
        p.ropeAndStore(layer: layer, cache: cache)
        p.attend(layer: layer, cache: cache)
        p.linear(p.attention, [(w.output, p.projected)])
        if let norm = w.postAttentionNorm { p.rmsNorm(p.projected, norm, into: p.projected) }
        p.addResidual(p.projected)

        p.rmsNorm(p.x, w.ffnNorm, into: p.normed)
        p.feedForward(w, layer: layer)
        if let norm = w.postFFNNorm { p.rmsNorm(p.projected, norm, into: p.projected) }
        p.addResidual(p.projected)
    }
}
