import CEmberKernels

/// A small float vector owned by the model (norm weights, biases), converted from whatever
/// type the file stores it in.
public final class FloatVector: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    public init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        for (i, v) in values.enumerated() { pointer[i] = v }
    }

    deinit { pointer.deallocate() }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

/// The weights of one transformer block. Optional parts exist only in some architectures.
public struct LayerWeights: @unchecked Sendable {
    public var attentionNorm: FloatVector
    public var query: WeightMatrix
    public var key: WeightMatrix
    public var value: WeightMatrix
    public var output: WeightMatrix
    public var queryBias: FloatVector?
    public var keyBias: FloatVector?
    public var valueBias: FloatVector?
    /// Per-head RMS norms of q and k (Gemma 3).
    public var queryNorm: FloatVector?
    public var keyNorm: FloatVector?
    /// Norms of the attention and FFN outputs before the residual add (Gemma's sandwich norms).
    public var postAttentionNorm: FloatVector?
    public var ffnNorm: FloatVector
    /// Absent for ungated FFNs (act(up) instead of act(gate) · up).
    public var gate: WeightMatrix?
    public var up: WeightMatrix
    public var down: WeightMatrix
    public var postFFNNorm: FloatVector?
}

/// All weights of a model, validated against its config: every tensor present, with the shape
/// the config implies and a type Ember can compute.
public struct ModelWeights: @unchecked Sendable {
    public var tokenEmbedding: WeightMatrix
    public var outputNorm: FloatVector
    /// The output head; the token embedding itself when the model ties them.
    public var output: WeightMatrix
    public var layers: [LayerWeights]

    public init(file: GGUFFile, config c: ModelConfig) throws {
        let loader = TensorLoader(file: file)
        tokenEmbedding = try loader.matrix("token_embd.weight", rows: c.vocabularySize, columns: c.embeddingLength)
        outputNorm = try loader.vector("output_norm.weight", count: c.embeddingLength)
        if file.hasTensor("output.weight") {
            output = try loader.matrix("output.weight", rows: c.vocabularySize, columns: c.embeddingLength)
        } else {
            output = tokenEmbedding
        }
        layers = []
        for l in 0..<c.layerCount {
            func name(_ part: String) -> String { "blk.\(l).\(part)" }
            let hasGate = file.hasTensor(name("ffn_gate.weight"))
            layers.append(LayerWeights(
                attentionNorm: try loader.vector(name("attn_norm.weight"), count: c.embeddingLength),
                query: try loader.matrix(name("attn_q.weight"), rows: c.queryLength, columns: c.embeddingLength),
                key: try loader.matrix(name("attn_k.weight"), rows: c.kvLength, columns: c.embeddingLength),
                value: try loader.matrix(name("attn_v.weight"), rows: c.valueLength, columns: c.embeddingLength),
                output: try loader.matrix(name("attn_output.weight"), rows: c.embeddingLength, columns: c.headCount * c.valueDimension),
                queryBias: try loader.optionalVector(name("attn_q.bias"), count: c.queryLength),
                keyBias: try loader.optionalVector(name("attn_k.bias"), count: c.kvLength),
                valueBias: try loader.optionalVector(name("attn_v.bias"), count: c.valueLength),
                queryNorm: try loader.optionalVector(name("attn_q_norm.weight"), count: c.headDimension),
                keyNorm: try loader.optionalVector(name("attn_k_norm.weight"), count: c.headDimension),
                postAttentionNorm: try loader.optionalVector(name("post_attention_norm.weight"), count: c.embeddingLength),
                ffnNorm: try loader.vector(name("ffn_norm.weight"), count: c.embeddingLength),
                gate: hasGate ? try loader.matrix(name("ffn_gate.weight"), rows: c.feedForwardLength, columns: c.embeddingLength) : nil,
                up: try loader.matrix(name("ffn_up.weight"), rows: c.feedForwardLength, columns: c.embeddingLength),
                down: try loader.matrix(name("ffn_down.weight"), rows: c.embeddingLength, columns: c.feedForwardLength),
                postFFNNorm: try loader.optionalVector(name("post_ffw_norm.weight"), count: c.embeddingLength)
            ))
        }
    }

    /// Bytes of weights read to decode one token: every layer matrix and the output head
    /// (the embedding lookup reads one row only).
    public var bytesPerToken: Int {
        var total = output.byteCount + tokenEmbedding.rowBytes
        for layer in layers {
            total += layer.query.byteCount + layer.key.byteCount + layer.value.byteCount + layer.output.byteCount
            total += (layer.gate?.byteCount ?? 0) + layer.up.byteCount + layer.down.byteCount
        }
        return total
    }
}

/// Finds tensors by name and checks their shapes and types.
struct TensorLoader {
    let file: GGUFFile

    func info(_ name: String) throws -> GGUFTensorInfo {
        guard let info = file.tensorInfo(name) else { throw GGUFError.missingTensor(path: file.path, tensor: name) }
        return info
    }

    func matrix(_ name: String, rows: Int, columns: Int) throws -> WeightMatrix {
        let t = try info(name)
        guard t.dims == [columns, rows] else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: name, expected: [columns, rows], found: t.dims)
        }
        guard t.type.isComputable else { throw GGUFError.unsupportedTensorType(path: file.path, tensor: name, type: t.type) }
        return WeightMatrix(name: name, type: t.type, rows: rows, columns: columns, data: file.data(of: t))
    }

    func vector(_ name: String, count: Int) throws -> FloatVector {
        let t = try info(name)
        guard t.elementCount == count, t.dims.count == 1 else {
            throw GGUFError.wrongTensorShape(path: file.path, tensor: name, expected: [count], found: t.dims)
        }
        guard t.type.isComputable else { throw GGUFError.unsupportedTensorType(path: file.path, tensor: name, type: t.type) }
        let vector = FloatVector(count: count)
        ember_dequantize_row(Int32(t.type.rawValue), file.data(of: t), vector.pointer, Int64(count))
        return vector
    }

    func optionalVector(_ name: String, count: Int) throws -> FloatVector? {
        file.hasTensor(name) ? try vector(name, count: count) : nil
    }
}
