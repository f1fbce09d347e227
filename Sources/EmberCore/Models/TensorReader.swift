import CEmberKernels

/// Finds an architecture's tensors by name and checks their shapes and types, so that every
/// weight an architecture holds is present, shaped as its config implies, and computable.
/// Norm weights and biases are converted to floats once; matrices stay in the mapped file.
struct TensorReader {
    let file: GGUFFile

    /// Whether a bias (or another optional tensor) must be there, may be, or must not be read.
    enum Presence { case required, optional, absent }

    func has(_ name: String) -> Bool { file.hasTensor(name) }

    func matrix(_ name: String, rows: Int, columns: Int) throws -> WeightMatrix {
        let t = try info(name)
        guard t.dims == [columns, rows] else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: name, expected: [columns, rows], found: t.dims)
        }
        guard t.type.isComputable else { throw GGUFError.unsupportedTensorType(path: file.path, tensor: name, type: t.type) }
        return WeightMatrix(name: name, type: t.type, rows: rows, columns: columns, data: file.data(of: t))
    }

    /// The number of rows of the 2-D tensor `name` whose rows hold `columns` elements (tables
    /// whose length the file decides, such as OPT's learned positions).
    func rowCount(_ name: String, columns: Int) throws -> Int {
        let t = try info(name)
        guard t.dims.count == 2, t.dims[0] == columns else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: name, expected: [columns, t.dims.last ?? 1], found: t.dims)
        }
        return t.dims[1]
    }

    func vector(_ name: String, count: Int) throws -> FloatVector {
        let t = try info(name)
        guard t.elementCount == count, t.dims.count == 1 else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: name, expected: [count], found: t.dims)
        }
        guard t.type.isComputable else { throw GGUFError.unsupportedTensorType(path: file.path, tensor: name, type: t.type) }
        let vector = FloatVector(count: count)
        ember_dequantize_row(Int32(t.type.rawValue), file.data(of: t), vector.pointer, Int64(count))
        // A NaN or infinity here would silently turn every output into NaN.
        if let bad = (0..<count).first(where: { !vector.pointer[$0].isFinite }) {
            throw ModelError.badHyperparameter(path: file.path, key: name, value: "\(vector.pointer[bad]) at element \(bad)",
                                               expected: "finite values")
        }
        return vector
    }

    func vector(_ name: String, count: Int, _ presence: Presence) throws -> FloatVector? {
        switch presence {
        case .absent: return nil
        case .optional where !has(name): return nil
        default: return try vector(name, count: count)
        }
    }

    /// `{prefix}.weight` and, per `bias`, `{prefix}.bias`.
    func norm(_ prefix: String, _ kind: Norm.Kind, count: Int, epsilon: Float, bias: Presence = .absent) throws -> Norm {
        Norm(kind: kind, weight: try vector(prefix + ".weight", count: count),
             bias: try vector(prefix + ".bias", count: count, bias), epsilon: epsilon)
    }

    func optionalNorm(_ prefix: String, _ kind: Norm.Kind, count: Int, epsilon: Float) throws -> Norm? {
        has(prefix + ".weight") ? try norm(prefix, kind, count: count, epsilon: epsilon) : nil
    }

    /// `{prefix}.weight` as `rows` × `columns` and, per `bias`, `{prefix}.bias`.
    func linear(_ prefix: String, rows: Int, columns: Int, bias: Presence = .absent) throws -> Linear {
        Linear(weight: try matrix(prefix + ".weight", rows: rows, columns: columns),
               bias: try vector(prefix + ".bias", count: rows, bias))
    }

    /// A fused projection `{prefix}.weight` whose rows are the concatenation of parts of
    /// `parts` rows each (Falcon's q | k | v), read as one Linear per part: views of the same
    /// rows in place, so nothing is copied and the parts run as separate projections.
    func split(_ prefix: String, parts: [Int], columns: Int, bias: Presence = .absent) throws -> [Linear] {
        let whole = try linear(prefix, rows: parts.reduce(0, +), columns: columns, bias: bias)
        var first = 0
        return parts.map { rows in
            defer { first += rows }
            let weight = WeightMatrix(name: "\(whole.weight.name)[\(first)..<\(first + rows)]", type: whole.weight.type,
                                      rows: rows, columns: columns, data: whole.weight.data + first * whole.weight.rowBytes)
            let bias = whole.bias.map { FloatVector(Array(UnsafeBufferPointer(start: $0.pointer + first, count: rows))) }
            return Linear(weight: weight, bias: bias)
        }
    }

    private func info(_ name: String) throws -> GGUFTensorInfo {
        guard let info = file.tensorInfo(name) else { throw GGUFError.missingTensor(path: file.path, tensor: name) }
        return info
    }
}

/// The tensors most architectures name alike (llama.cpp's GGUF names).
extension TensorReader {
    /// `token_embd.weight`, vocabulary × embedding.
    func tokenEmbedding(_ c: ModelConfig) throws -> WeightMatrix {
        try matrix("token_embd.weight", rows: c.vocabularySize, columns: c.embeddingLength)
    }

    /// `output_norm` and `output.weight`, or the token embedding when the model ties them.
    func outputHead(_ c: ModelConfig, norm kind: Norm.Kind, epsilon: Float, bias: Presence = .absent) throws -> OutputHead {
        let output = has("output.weight")
            ? try matrix("output.weight", rows: c.vocabularySize, columns: c.embeddingLength)
            : try tokenEmbedding(c)
        return OutputHead(norm: try norm("output_norm", kind, count: c.embeddingLength, epsilon: epsilon, bias: bias),
                          output: Linear(weight: output, bias: nil))
    }

    /// `blk.N.attn_q`, `attn_k`, `attn_v` (biases per `bias`) and `attn_output` (its bias per
    /// `outputBias`), shaped by `c`.
    func attentionProjections(layer l: Int, _ c: ModelConfig, bias: Presence = .absent, outputBias: Presence = .absent)
        throws -> (query: Linear, key: Linear, value: Linear, output: Linear) {
        let p = "blk.\(l)."
        return (try linear(p + "attn_q", rows: c.queryLength, columns: c.embeddingLength, bias: bias),
                try linear(p + "attn_k", rows: c.kvLength, columns: c.embeddingLength, bias: bias),
                try linear(p + "attn_v", rows: c.valueLength, columns: c.embeddingLength, bias: bias),
                try linear(p + "attn_output", rows: c.embeddingLength, columns: c.attentionOutputLength, bias: outputBias))
    }

    /// `blk.N.ffn_gate` (when `gated`), `ffn_up` and the down projection, shaped by `c`.
    func feedForward(layer l: Int, _ c: ModelConfig, gated: Bool = true, bias: Presence = .absent) throws -> FeedForward {
        let p = "blk.\(l).", d = c.embeddingLength, f = c.feedForwardLength
        return FeedForward(gate: gated ? try linear(p + "ffn_gate", rows: f, columns: d, bias: bias) : nil,
                           up: try linear(p + "ffn_up", rows: f, columns: d, bias: bias),
                           down: try down(layer: l, c, bias: bias),
                           activation: c.activation)
    }

    /// Layer `l`'s down projection: llama.cpp's row-major `blk.N.ffn_down` (d rows of F), or the
    /// neuron-major `blk.N.ffn_down_t` (F rows of d) that PowerInfer's files hold instead, read
    /// in place. A PowerInfer (`PWRI`) file is read as PowerInfer reads it, from `ffn_down_t`, so
    /// that is the tensor a missing-tensor error names for it.
    func down(layer l: Int, _ c: ModelConfig, bias: Presence = .absent) throws -> DownProjection {
        let d = c.embeddingLength, f = c.feedForwardLength
        let rowMajor = "blk.\(l).ffn_down", neuronMajor = "blk.\(l).ffn_down_t"
        let powerInfer = file.flavor == .powerInfer
        let useNeuronMajor = has(neuronMajor + ".weight") ? powerInfer || !has(rowMajor + ".weight") : powerInfer
        guard useNeuronMajor else { return .rowMajor(try linear(rowMajor, rows: d, columns: f, bias: bias)) }
        let weight = try matrix(neuronMajor + ".weight", rows: f, columns: d)
        guard NeuronMajorMatrix.canAccumulate(weight.type) else {
            throw GGUFError.unsupportedTensorType(path: file.path, tensor: weight.name, type: weight.type)
        }
        return .neuronMajor(NeuronMajorMatrix(inPlace: weight), bias: try vector(neuronMajor + ".bias", count: d, bias))
    }
}
