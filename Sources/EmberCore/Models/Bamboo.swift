import Foundation

/// Bamboo (PowerInfer's dReLU model built on Mistral 7B): the llama block with dReLU,
/// relu(gate) · relu(up), in its FFN. PowerInfer computes exactly its llama graph with the up
/// branch put through a ReLU too (its `LLM_FFN_SYM`; snapshot d3ebd7c, `build_llama_variants`):
/// no sliding window, no biases, the same rope and kv heads. Its files may store down
/// row-major (`ffn_down`) or, as PowerInfer's converter writes them, neuron-major (`ffn_down_t`).
struct Bamboo: Architecture {
    static let names = ["bamboo"]

    private let llama: Llama

    var config: ModelConfig { llama.config }
    var embedding: Embedding { llama.embedding }
    var head: OutputHead { llama.head }
    var layers: [PreNormLayer] { llama.layers }

    init(file: GGUFFile, name: String) throws {
        llama = try Llama(file: file, name: name, activation: try Architectures.activation(file, default: .drelu))
    }

    func block(_ l: Int, _ p: ForwardPass) { llama.block(l, p) }
}
