/// What each part of a model costs in fast-device memory, taken from the loaded weights so it
/// holds for any model Ember runs: the dense blocks, and one FFN neuron per layer.
///
/// The token embedding is not a block: decoding reads one row of it per token, so it stays on
/// the host and the device receives that row.
public struct PlacementCosts: Sendable, Equatable {
    /// A part of the model the device holds whole.
    public enum DenseBlock: Hashable, Sendable, CustomStringConvertible {
        /// A layer's Q, K, V and output projections with their biases and head norms.
        case attention(layer: Int)
        /// The final norm and the output head.
        case outputHead

        /// The name in placement files: `blk.N.attn` or `output`.
        public var description: String {
            switch self {
            case .attention(let layer): return "blk.\(layer).attn"
            case .outputHead: return "output"
            }
        }

        public init?(name: String) {
            if name == "output" {
                self = .outputHead
                return
            }
            let parts = name.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 3, parts[0] == "blk", parts[2] == "attn", let layer = Int(parts[1]), layer >= 0,
                  String(layer) == parts[1] else { return nil }
            self = .attention(layer: layer)
        }
    }

    public struct DenseCost: Sendable, Equatable {
        public var block: DenseBlock
        /// Device memory the block takes (weights, and for attention its KV cache).
        public var bytes: Int
        /// Bytes read per token to compute it: the weights, and for attention the KV cache rows
        /// attended to, on average over a sequence that fills the cache (half of it).
        public var readBytes: Int

        public init(block: DenseBlock, bytes: Int, readBytes: Int? = nil) {
            self.block = block
            self.bytes = bytes
            self.readBytes = readBytes ?? bytes
        }
    }

    /// Dense blocks, attention layer 0 upwards, then the output head. Placement weighs each
    /// against FFN neurons by the bytes per token it saves the CPU (`Placement.solve`).
    public var denseBlocks: [DenseCost]
    /// Bytes the device holds per FFN neuron, per layer: its gate row, up row and down column,
    /// the down column as the sparse kernels store it (the file's neuron-major row, else a
    /// `NeuronMajorMatrix.defaultType` copy).
    public var neuronBytes: [Int]
    /// Bytes of each layer's FFN as the model file stores it (gate, up and down), for offloading
    /// whole layers, which keeps the file's tensors as they are.
    public var feedForwardFileBytes: [Int]
    public var feedForwardLength: Int

    public init(denseBlocks: [DenseCost], neuronBytes: [Int], feedForwardFileBytes: [Int], feedForwardLength: Int) {
        self.denseBlocks = denseBlocks
        self.neuronBytes = neuronBytes
        self.feedForwardFileBytes = feedForwardFileBytes
        self.feedForwardLength = feedForwardLength
    }

    /// The costs of `model`'s weights. `kvCacheTokens` > 0 reserves, beside each attention
    /// block, its layer's KV cache (float keys and values) for that many positions.
    init(model: LanguageModel, kvCacheTokens: Int = 0) {
        var blocks: [DenseCost] = []
        var neuronBytes: [Int] = []
        var fileBytes: [Int] = []
        let c = model.config
        let floatBytes = MemoryLayout<Float>.size
        for l in 0..<model.layerCount {
            let a = model.architecture.attention(l), f = model.architecture.feedForward(l)
            // The attention's biases and head norms travel with it (the layer's norms run on the host).
            let vectors = [a.query.bias, a.key.bias, a.value.bias, a.output.bias, a.queryNorm?.weight, a.keyNorm?.weight]
            let cache = max(kvCacheTokens, 0) * (c.kvLength + c.valueLength) * floatBytes
            let weights = a.byteCount + vectors.reduce(0) { $0 + ($1?.count ?? 0) } * floatBytes
            blocks.append(DenseCost(block: .attention(layer: l), bytes: weights + cache, readBytes: weights + cache / 2))

            let hidden = c.embeddingLength
            let downRow = f.down.neuronMajor?.weights.rowBytes
                ?? NeuronMajorMatrix.defaultType(length: hidden).byteCount(elements: hidden) ?? hidden * 2
            neuronBytes.append((f.gate?.weight.rowBytes ?? 0) + f.up.weight.rowBytes + downRow)
            fileBytes.append(f.byteCount)
        }
        let head = model.architecture.head
        blocks.append(DenseCost(block: .outputHead, bytes: head.output.weight.byteCount + head.norm.weight.count * floatBytes))
        self.init(denseBlocks: blocks, neuronBytes: neuronBytes, feedForwardFileBytes: fileBytes,
                  feedForwardLength: c.feedForwardLength)
    }

    public var layerCount: Int { neuronBytes.count }

    /// Device bytes of one block.
    public func bytes(of block: DenseBlock) -> Int {
        denseBlocks.first { $0.block == block }?.bytes ?? 0
    }

    /// Bytes one block reads per token.
    func readBytes(of block: DenseBlock) -> Int {
        denseBlocks.first { $0.block == block }?.readBytes ?? 0
    }
}
