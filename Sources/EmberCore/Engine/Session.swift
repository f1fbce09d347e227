/// One conversation with a model: the model, the threads working on it, its KV cache and the
/// scratch of the forward pass. Tokens go in with `evaluate`; logits come out.
public final class Session: @unchecked Sendable {
    public let model: LanguageModel
    public let pool: ThreadPool
    public let cache: KVCache
    public let pass: ForwardPass
    private let lastLogits: Matrix
    /// The tokens whose keys and values are in the cache, in order.
    public private(set) var tokens: [Int32] = []

    /// `contextLength` positions of KV cache (at most the model's own context); prompts are
    /// evaluated `batchSize` tokens at a time as matrix products.
    public init(model: LanguageModel, threads: Int, contextLength: Int? = nil, batchSize: Int = 64) {
        self.model = model
        let context = max(1, min(contextLength ?? 2048, model.config.contextLength))
        pool = ThreadPool(threads: threads)
        cache = KVCache(config: model.config, capacity: context)
        pass = ForwardPass(config: model.config, pool: pool, maxTokens: max(1, batchSize), contextCapacity: context)
        lastLogits = Matrix(rows: 1, length: model.config.vocabularySize)
    }

    public var contextLength: Int { cache.capacity }
    /// Positions already in the cache.
    public var position: Int { cache.count }
    public var vocabularySize: Int { model.config.vocabularySize }

    /// Starts a new sequence.
    public func reset() {
        cache.clear()
        tokens.removeAll()
    }

    /// Forgets positions from `position` on.
    public func rewind(to position: Int) {
        cache.truncate(to: position)
        tokens.removeSubrange(cache.count...)
    }

    /// Makes the cache hold exactly `sequence`, keeping the longest prefix it already holds
    /// and evaluating only the rest; returns the logits after the last token. A chat turn thus
    /// costs only its new tokens.
    @discardableResult
    public func continueWith(_ sequence: [Int32]) throws -> UnsafeBufferPointer<Float> {
        var common = zip(tokens, sequence).prefix { $0 == $1 }.count
        // At least one token must be evaluated to have logits.
        if common == sequence.count { common -= 1 }
        rewind(to: common)
        return try evaluate(Array(sequence[common...]))
    }

    /// Appends `tokens` to the sequence and returns the logits after the last of them. The
    /// buffer is valid until the next call.
    @discardableResult
    public func evaluate(_ tokens: [Int32]) throws -> UnsafeBufferPointer<Float> {
        try model.forward(tokens[...], cache: cache, pass: pass, logits: .last, into: lastLogits)
        self.tokens += tokens
        return UnsafeBufferPointer(start: lastLogits.pointer, count: vocabularySize)
    }

    /// Appends `tokens` and writes the logits after every one of them into `output`, one row
    /// per token.
    public func evaluateAll(_ tokens: [Int32], into output: Matrix) throws {
        precondition(output.rows >= tokens.count && output.length == vocabularySize)
        try model.forward(tokens[...], cache: cache, pass: pass, logits: .all, into: output)
        self.tokens += tokens
    }
}
