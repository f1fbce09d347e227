/// One transformer architecture: which metadata keys and tensors it reads from a GGUF file,
/// and its block, written with the operations of a forward pass (ForwardPass). Each
/// architecture is one file in Models/ plus one line in `Architectures.all`; Models/README.md
/// says how to add one.
///
/// An architecture says what is computed, never where: whether attention runs on the CPU or a
/// device, and whether the FFN runs densely or sparsely, is the executors' business.
protocol Architecture: Sendable {
    /// The weights of one layer, as this architecture has them.
    associatedtype Layer: LayerParts
    /// The `general.architecture` values this type reads.
    static var names: [String] { get }
    /// Reads the hyperparameters and tensors of a file whose architecture is `name`.
    init(file: GGUFFile, name: String) throws
    var config: ModelConfig { get }
    var embedding: Embedding { get }
    var head: OutputHead { get }
    var layers: [Layer] { get }
    /// Layer `l` on the batch in `pass`: reads and updates the residual stream `pass.x`.
    func block(_ l: Int, _ pass: ForwardPass)
}

/// What every layer has, whatever else its architecture adds: the parts the executors, the
/// sparsity layer and placement work with.
protocol LayerParts: Sendable {
    var attention: Attention { get }
    var feedForward: FeedForward { get }
}

extension Architecture {
    /// Layer `l`'s attention and FFN.
    func attention(_ l: Int) -> Attention { layers[l].attention }
    func feedForward(_ l: Int) -> FeedForward { layers[l].feedForward }
}

/// Every architecture Ember runs.
enum Architectures {
    static let all: [Entry] = [
        Entry(Llama.self),
        Entry(Qwen2.self),
        Entry(Qwen3.self),
        Entry(Gemma3.self),
        Entry(Bamboo.self),
        Entry(Falcon.self),
        Entry(OPT.self),
    ]

    /// An architecture's names and its reader.
    struct Entry: Sendable {
        let names: [String]
        let read: @Sendable (GGUFFile, String) throws -> any Architecture

        init<A: Architecture>(_ type: A.Type) {
            names = A.names
            read = { try A(file: $0, name: $1) }
        }
    }

    /// The architecture `file` declares, read from it.
    static func load(_ file: GGUFFile) throws -> any Architecture {
        let name = try file.requiredString("general.architecture")
        guard let entry = all.first(where: { $0.names.contains(name) }) else {
            throw ModelError.unsupportedArchitecture(path: file.path, architecture: name, supported: all.flatMap(\.names))
        }
        return try entry.read(file, name)
    }

    /// The FFN activation an `ember.ffn_activation` key asks for (synthetic models), else `fallback`.
    static func activation(_ file: GGUFFile, default fallback: VectorKernels.Activation) throws -> VectorKernels.Activation {
        guard let name = try file.string("ember.ffn_activation") else { return fallback }
        guard let chosen = VectorKernels.Activation(rawValue: name) else {
            throw ModelError.badHyperparameter(path: file.path, key: "ember.ffn_activation", value: name,
                                               expected: "one of silu, gelu, relu, drelu")
        }
        return chosen
    }
}
