/// The llama-family block (Llama 2/3, Mistral, SmolLM2; Qwen2 adds q/k/v biases):
/// pre-norm attention with rope and grouped kv heads, then a pre-norm gated FFN.
enum Llama {
    static func block(_ w: LayerWeights, layer: Int, pass p: ForwardPass, cache: KVCache) {
        if p.tokenCount == 1, let device = p.denseOffload, device.attention(w, layer: layer, pass: p, cache: cache) {
            // Done on the device, residual included.
        } else {
            attention(w, layer: layer, pass: p, cache: cache)
            p.denseOffload?.cacheWritten(layer: layer, positions: p.positions[0]..<p.positions[0] + p.tokenCount)
        }

        p.rmsNorm(p.x, w.ffnNorm, into: p.normed)
        p.feedForward(w, layer: layer)
        p.addResidual(p.projected)
    }

    /// Pre-norm attention on the CPU, added into the residual stream.
    static func attention(_ w: LayerWeights, layer: Int, pass p: ForwardPass, cache: KVCache) {
        p.rmsNorm(p.x, w.attentionNorm, into: p.normed)
        p.linear(p.normed, [(w.query, p.query), (w.key, p.key), (w.value, p.value)])
        p.addBias(w.queryBias, to: p.query)
        p.addBias(w.keyBias, to: p.key)
        p.addBias(w.valueBias, to: p.value)
        p.ropeAndStore(layer: layer, cache: cache)
        p.attend(layer: layer, cache: cache)
        p.linear(p.attention, [(w.output, p.projected)])
        p.addResidual(p.projected)
    }
}
