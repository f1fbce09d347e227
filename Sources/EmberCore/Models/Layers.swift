/// The parts an architecture's block is built from, as weights plus the few settings that say
/// how to compute them. Architecture files read them from the model file (TensorReader) and
/// hand them to the operations of a forward pass (ForwardPass); executors — the CPU, a device,
/// the sparse FFN — run them. None of these types computes anything itself.

/// A normalisation of each token's vector: RMS norm, or LayerNorm (mean removed first), scaled
/// by `weight` and shifted by `bias` when there is one.
struct Norm: Sendable {
    enum Kind: Sendable { case rms, layer }
    let kind: Kind
    let weight: FloatVector
    let bias: FloatVector?
    let epsilon: Float
}

/// y = W·x (+ b).
struct Linear: Sendable {
    let weight: WeightMatrix
    let bias: FloatVector?

    var rows: Int { weight.rows }
}

/// Self-attention over the KV cache: projections to queries, keys and values (a fused QKV
/// tensor is read as three row ranges of one matrix), optional per-head RMS norms of q and k,
/// rotary positions, grouped kv heads, causal and optionally within a sliding window, and the
/// output projection. Its input is the normed residual; its output goes back to the residual
/// through whatever the block does with it.
struct Attention: Sendable {
    let query: Linear
    let key: Linear
    let value: Linear
    /// Per-head RMS norms of q and k after projection (Gemma 3, Qwen3).
    let queryNorm: Norm?
    let keyNorm: Norm?
    /// nil: positions come from a learned embedding instead (OPT).
    let rope: Rope?
    /// Each query attends to at most this many positions, itself included.
    let window: Int?
    /// Multiplies q·k before the softmax.
    let scale: Float
    let output: Linear

    var hasBiases: Bool { query.bias != nil || key.bias != nil || value.bias != nil || output.bias != nil }
    var byteCount: Int { query.weight.byteCount + key.weight.byteCount + value.weight.byteCount + output.weight.byteCount }
}

/// The feed-forward block: down(act(gate) · up), or down(act(up)) without a gate; dReLU
/// (Bamboo) is relu(gate) · relu(up). Biases, where a model has them, are added to gate and up
/// before the activation and to down's output.
struct FeedForward: Sendable {
    let gate: Linear?
    let up: Linear
    let down: DownProjection
    let activation: VectorKernels.Activation

    var neuronCount: Int { up.rows }
    var hasBiases: Bool { gate?.bias != nil || up.bias != nil || down.bias != nil }
    var byteCount: Int { (gate?.weight.byteCount ?? 0) + up.weight.byteCount + down.weight.byteCount }
}

/// The FFN's down projection as the file stores it: row-major (llama.cpp's `ffn_down`, one
/// row per output channel), or neuron-major (PowerInfer's `ffn_down_t`, one row per neuron:
/// neuron i's output vector), read in place. The sparse FFN works on neuron-major rows, so a
/// neuron-major file needs no transposed copy.
enum DownProjection: Sendable {
    case rowMajor(Linear)
    case neuronMajor(NeuronMajorMatrix, bias: FloatVector?)

    var bias: FloatVector? {
        switch self {
        case .rowMajor(let linear): return linear.bias
        case .neuronMajor(_, let bias): return bias
        }
    }

    /// The matrix as stored (rows = hidden size for row-major, neurons for neuron-major).
    var weight: WeightMatrix {
        switch self {
        case .rowMajor(let linear): return linear.weight
        case .neuronMajor(let matrix, _): return matrix.weights
        }
    }

    /// The neuron-major matrix when the file stores one.
    var neuronMajor: NeuronMajorMatrix? {
        if case .neuronMajor(let matrix, _) = self { return matrix }
        return nil
    }
}

/// Token ids to vectors: a row of the embedding matrix, scaled, plus a learned position row
/// when the model has one (OPT adds `positionOffset` to the position first).
struct Embedding: Sendable {
    let tokens: WeightMatrix
    let scale: Float
    let positions: WeightMatrix?
    let positionOffset: Int
}

/// The final norm and the projection to logits (often the token embedding itself).
struct OutputHead: Sendable {
    let norm: Norm
    let output: Linear
}

/// The layer of most decoder-only transformers: a norm before attention and one before the
/// FFN, each output added to the residual stream (Llama, Qwen, Mistral, Bamboo, OPT).
struct PreNormLayer: LayerParts {
    let attentionNorm: Norm
    let attention: Attention
    let feedForwardNorm: Norm
    let feedForward: FeedForward

    /// The pre-norm block: x += attention(norm(x)); x += FFN(norm(x)).
    func run(layer l: Int, _ p: ForwardPass) {
        p.norm(attentionNorm, p.x, into: p.normed)
        p.attention(attention, layer: l, input: p.normed, into: p.projected)
        p.addResidual(p.projected)

        p.norm(feedForwardNorm, p.x, into: p.normed)
        p.feedForward(feedForward, layer: l, input: p.normed, into: p.projected)
        p.addResidual(p.projected)
    }
}
