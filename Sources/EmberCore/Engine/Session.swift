import Foundation

/// A conversation with a model: its KV cache, its threads and, when asked for, its sparse FFN
/// and device. Built from a `Model` and `SessionOptions`; one session runs one sequence at a
/// time, and its calls wait their turn (it is an actor).
///
/// ```swift
/// let model = try Model(path: path)
/// let session = try Session(model: model)
/// for try await event in session.generate(.chat([.user("Hi!")]), GenerationSettings(maxTokens: 64)) {
///     if case .token(let token) = event { print(token.text, terminator: "") }
/// }
/// ```
public actor Session {
    public nonisolated let model: Model
    public nonisolated let options: SessionOptions
    /// What the assembly decided that a user should know: where a placement came from, what
    /// stays on the CPU and why. Empty for plain CPU sessions.
    public nonisolated let notes: [String]
    /// Positions of KV cache the session holds.
    public nonisolated let contextLength: Int
    /// How the FFN runs.
    public nonisolated let sparsityMode: SparsityMode
    let context: Context

    public init(model: Model, options: SessionOptions = SessionOptions()) throws {
        var assembly = SessionAssembly(model: model, options: options)
        let context = try assembly.makeContext()
        self.model = model
        self.options = options
        self.context = context
        notes = assembly.notes
        contextLength = context.contextLength
        sparsityMode = context.sparse?.mode ?? .dense
    }

    /// Forgets the conversation: the next generation starts from an empty cache.
    public func reset() { context.reset() }

    /// The tokens the cache holds, in order.
    public var tokens: [Int32] { context.tokens }

    /// Generates a continuation of `prompt`, one event per chosen token and a last one with
    /// the statistics. The cache keeps what it already holds of the prompt (a conversation's
    /// earlier turns), so only new tokens are evaluated. Cancelling the task that iterates
    /// stops the generation within one token; so does ending the iteration early.
    public nonisolated func generate(_ prompt: Prompt, _ settings: GenerationSettings = GenerationSettings())
        -> AsyncThrowingStream<GenerationEvent, Error> {
        AsyncThrowingStream { continuation in
            let task = Task { await self.run(prompt, settings, continuation) }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private func run(_ prompt: Prompt, _ settings: GenerationSettings,
                     _ continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation) {
        do {
            let ids = model.tokens(of: prompt)
            var sampler = Sampler(settings.sampling)
            var text = StopStringFilter(stops: settings.stop)
            var decoder = StreamingDecoder(tokenizer: model.tokenizer)
            var stopped = false
            let tokenizer = model.tokenizer, ignoresEnd = settings.ignoresEndOfGeneration
            var statistics = try context.generate(prompt: ids, maxTokens: max(0, settings.maxTokens), sampler: &sampler,
                                                  isEnd: { !ignoresEnd && tokenizer.isEndOfGeneration($0) }) { token in
                if Task.isCancelled { return false }
                let piece = model.tokenizer.isEndOfGeneration(token) ? "" : decoder.feed(token)
                let (shown, hit) = text.feed(piece)
                if case .terminated = continuation.yield(.token(GeneratedToken(id: token, text: shown))) { return false }
                if hit { stopped = true }
                return !hit
            }
            let rest = text.flush(decoder.flush())
            if !rest.isEmpty, !stopped { continuation.yield(.token(GeneratedToken(id: nil, text: rest))) }
            if stopped { statistics.stopReason = .stopString }
            continuation.yield(.finished(statistics))
            continuation.finish()
        } catch {
            continuation.finish(throwing: error)
        }
    }

    /// Evaluates `tokens` after what the cache holds (nothing, with `fromStart`) and returns a
    /// copy of the logits after the last of them.
    public func logits(after tokens: [Int32], fromStart: Bool = true) throws -> [Float] {
        if fromStart { context.reset() }
        return try context.evaluate(tokens)
    }

    /// Perplexity of `text` by llama.cpp's rule (see PerplexityResult): consecutive chunks of
    /// `chunkLength` tokens, each from an empty cache; at most `maxChunks` of them.
    /// `progress(done, chunks, runningPerplexity)` follows each chunk.
    public func perplexity(of text: String, chunkLength: Int, maxChunks: Int? = nil,
                           progress: (@Sendable (Int, Int, Double) -> Void)? = nil) throws -> PerplexityResult {
        var tokens = model.corpusTokens(text)
        if let maxChunks, tokens.count / max(chunkLength, 1) > maxChunks { tokens = Array(tokens.prefix(maxChunks * chunkLength)) }
        return try context.perplexity(of: tokens, context: chunkLength) { progress?($0, $1, $2) }
    }

    /// Prefill and decode speed on a pseudo-random prompt (see BenchmarkResult).
    /// `progress(repetitionsDone)` follows each repetition.
    public func benchmark(promptTokens: Int, generatedTokens: Int, repetitions: Int,
                          progress: (@Sendable (Int) -> Void)? = nil) throws -> BenchmarkResult {
        try context.benchmark(promptTokens: promptTokens, generatedTokens: generatedTokens, repetitions: repetitions) { progress?($0) }
    }

    /// The sparsity reached so far (share of FFN neurons skipped) and, in hybrid runs, what
    /// the device did; nil for dense sessions.
    public var sparsityReport: (skipped: Double, hybrid: HybridReport?)? {
        context.sparse.map { ($0.reachedSparsity, context.hybridReport) }
    }
}

/// What a generation is allowed to do.
public struct GenerationSettings: Sendable, Equatable {
    /// The most tokens generated (an end-of-generation token included).
    public var maxTokens: Int
    public var sampling: SamplerSettings
    /// Texts that end the generation when they appear; they are not part of the output.
    public var stop: [String]
    /// Go on after end-of-generation tokens, up to `maxTokens` (benchmarks want fixed lengths).
    public var ignoresEndOfGeneration: Bool

    public init(maxTokens: Int = 128, sampling: SamplerSettings = SamplerSettings(), stop: [String] = [],
                ignoresEndOfGeneration: Bool = false) {
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stop = stop
        self.ignoresEndOfGeneration = ignoresEndOfGeneration
    }
}

/// One step of a generation as it happens.
public enum GenerationEvent: Sendable {
    /// A token was chosen; its text is what became final with it (possibly empty while a
    /// character or a possible stop string is incomplete).
    case token(GeneratedToken)
    /// The generation ended; the statistics say why.
    case finished(GenerationStatistics)
}

public struct GeneratedToken: Sendable, Equatable {
    /// The token id; nil for text held back until the end.
    public var id: Int32?
    public var text: String
}

/// Holds back text that might be the start of a stop string, and cuts the text at the first
/// stop string that appears.
struct StopStringFilter {
    let stops: [String]
    private var pending = ""

    init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// The text that is final after `piece`, and whether a stop string was reached (the text
    /// then ends before it).
    mutating func feed(_ piece: String) -> (text: String, stopped: Bool) {
        pending += piece
        guard !stops.isEmpty else { defer { pending = "" }; return (pending, false) }
        if let cut = stops.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
            defer { pending = "" }
            return (String(pending[..<cut]), true)
        }
        // Keep the longest tail that a stop string starts with.
        var keep = 0
        for stop in stops {
            for length in stride(from: min(stop.count, pending.count), to: keep, by: -1) where pending.hasSuffix(stop.prefix(length)) {
                keep = length
                break
            }
        }
        let shown = String(pending.dropLast(keep))
        pending = String(pending.suffix(keep))
        return (shown, false)
    }

    /// What is still held back, with `tail` added, at the end of the generation.
    mutating func flush(_ tail: String) -> String {
        let (text, _) = feed(tail)
        defer { pending = "" }
        return text + pending
    }
}
