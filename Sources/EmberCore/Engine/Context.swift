/// One sequence being evaluated: the model, the threads working on it, its KV cache and the
/// scratch of the forward pass. Tokens go in with `evaluate`; the logits after the last one
/// stay inside, read with `withLogits` (scoped) or `logits()` (a copy). The engine's core, used
/// from one thread at a time; `Session` wraps it for apps.
final class Context {
    let model: LanguageModel
    let pool: ThreadPool
    let cache: KVCache
    let pass: ForwardPass
    private let lastLogits: Matrix
    /// The tokens whose keys and values are in the cache, in order.
    private(set) var tokens: [Int32] = []

    /// The sparse FFN of this context, if it runs one (nil: dense).
    var sparse: SparseExecution? {
        didSet { pass.sparsity = sparse }
    }
    /// The device running some layers' attention and the output head, if any.
    var denseBlocks: DeviceDenseBlocks? {
        didSet { pass.offload = denseBlocks }
    }

    /// `contextLength` positions of KV cache of `cacheType` (at most the model's own context;
    /// the type checked with `KVCache.check`); prompts are evaluated `batchSize` tokens at a
    /// time as matrix products.
    init(model: LanguageModel, threads: Int, contextLength: Int? = nil, batchSize: Int = 64, cacheType: KVCacheType = .f32) {
        self.model = model
        let context = max(1, min(contextLength ?? 2048, model.config.contextLength))
        pool = ThreadPool(threads: threads)
        cache = KVCache(config: model.config, capacity: context, type: cacheType)
        pass = ForwardPass(config: model.config, ropes: model.ropes, pool: pool, cache: cache, maxTokens: max(1, batchSize))
        lastLogits = Matrix(rows: 1, length: model.config.vocabularySize)
    }

    var contextLength: Int { cache.capacity }
    /// Positions already in the cache.
    var position: Int { cache.count }
    var vocabularySize: Int { model.config.vocabularySize }

    /// Starts a new sequence.
    func reset() { rewind(to: 0) }

    /// Forgets positions from `position` on.
    func rewind(to position: Int) {
        cache.truncate(to: position)
        tokens.removeSubrange(cache.count...)
    }

    /// Appends `tokens` to the sequence; the logits after the last of them are kept.
    func advance(_ tokens: [Int32]) throws {
        try model.forward(tokens[...], pass: pass, logits: .last, into: lastLogits)
        self.tokens += tokens
    }

    /// Makes the cache hold exactly `sequence`, keeping the longest prefix it already holds and
    /// evaluating only the rest (at least one token, for the logits). A chat turn thus costs only
    /// its new tokens.
    func continueWith(_ sequence: [Int32]) throws {
        var common = zip(tokens, sequence).prefix { $0 == $1 }.count
        if common == sequence.count { common -= 1 }
        rewind(to: common)
        try advance(Array(sequence[common...]))
    }

    /// Reads the logits after the last evaluated token.
    func withLogits<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: lastLogits.pointer, count: vocabularySize))
    }

    /// A copy of the logits after the last evaluated token.
    func logits() -> [Float] { lastLogits.array(row: 0) }

    /// Appends `tokens` and returns a copy of the logits after the last of them.
    @discardableResult
    func evaluate(_ tokens: [Int32]) throws -> [Float] {
        try advance(tokens)
        return logits()
    }

    /// Appends `tokens` and writes the logits after every one of them into `output`, one row
    /// per token.
    func evaluateAll(_ tokens: [Int32], into output: Matrix) throws {
        precondition(output.rows >= tokens.count && output.length == vocabularySize)
        try model.forward(tokens[...], pass: pass, logits: .all, into: output)
        self.tokens += tokens
    }
}

/// The index of the largest logit (the first of equals).
func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
    var best = 0
    for i in 1..<logits.count where logits[i] > logits[best] { best = i }
    return Int32(best)
}

func argmax(_ logits: [Float]) -> Int32 { logits.withUnsafeBufferPointer { argmax($0) } }
