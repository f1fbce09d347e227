// The seam between the server and the engine. The server owns HTTP, the OpenAI schema, stop
// strings, usage accounting and metrics; the engine owns the model, its tokenizer and chat
// template, scheduling and sampling. Tests drive the server with a fake backend.

/// What the server needs from an engine.
///
/// Calls come from connection threads, several at once, so implementations must be safe to call
/// concurrently. The synchronous members must return quickly (they are read by /health and
/// /metrics, and tokenization runs before a request is admitted).
public protocol CompletionBackend: Sendable {
    /// The model's name as clients send it in `model` and see it in `/v1/models`.
    var modelID: String { get }
    /// Tokens one sequence may hold: prompt plus generated tokens.
    var contextLength: Int { get }
    /// Loading or ready: `/health` answers 503 until ready, and so do generation endpoints.
    var readiness: BackendReadiness { get }
    /// Scheduler and cache figures, read by `/metrics` at each scrape.
    var load: BackendLoad { get }

    /// Token ids of `text`. `addSpecial`: BOS (and EOS) where the model's metadata asks for them;
    /// `parseSpecial`: text spelling a control token (`<|im_start|>`) becomes that token.
    func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) throws -> [Int32]
    /// The text of `tokens`; throws `BackendError.invalidRequest` for an id outside the vocabulary.
    func detokenize(_ tokens: [Int32]) throws -> String
    /// The prompt text for a conversation in the model's chat template, ending with the opening
    /// of the assistant's turn. Tokenized with `addSpecial: true, parseSpecial: true`.
    func renderChat(_ messages: [ChatTurn]) throws -> String

    /// Starts (or queues) a generation. The stream yields one `.token` per sampled token and ends
    /// with `.finished`; it throws on an engine failure (`BackendError` to choose the status).
    /// When the consumer stops early (the client left, a stop string matched, the server is
    /// stopping), the stream's `onTermination` is called: the generation must then free its slot
    /// within one step.
    func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, any Error>
}

public enum BackendReadiness: Sendable, Equatable {
    case loading
    case ready
}

/// The numbers routers balance on (see `ServerMetrics` for their exported names).
public struct BackendLoad: Sendable, Equatable {
    /// Requests being generated (holding a slot).
    public var running: Int
    /// Requests admitted and waiting for a slot.
    public var waiting: Int
    /// Fraction of KV-cache capacity in use, 0...1.
    public var kvCacheUsage: Double

    public init(running: Int = 0, waiting: Int = 0, kvCacheUsage: Double = 0) {
        self.running = running
        self.waiting = waiting
        self.kvCacheUsage = kvCacheUsage
    }
}

/// One message of a conversation, after the server has validated it.
public struct ChatTurn: Sendable, Equatable {
    public enum Role: String, Sendable, Equatable {
        case system, user, assistant
    }

    public var role: Role
    public var content: String

    public init(role: Role, content: String) {
        self.role = role
        self.content = content
    }
}

/// A validated generation: the prompt already tokenized and checked against the context.
public struct GenerationRequest: Sendable, Equatable {
    public var promptTokens: [Int32]
    /// At most this many tokens; prompt plus this never exceeds `contextLength`.
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Generate through end-of-generation tokens, up to `maxTokens` (`ignore_eos`, for benchmarks).
    public var ignoresEndOfGeneration: Bool

    public init(promptTokens: [Int32], maxTokens: Int, sampling: SamplingParameters = SamplingParameters(),
                ignoresEndOfGeneration: Bool = false) {
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.ignoresEndOfGeneration = ignoresEndOfGeneration
    }
}

/// Sampling as the client asked; nil means the engine's default. Ranges are checked by the
/// server (temperature 0...2 with 0 = greedy, top_p in (0, 1], top_k ≥ 0, min_p in [0, 1],
/// penalties in [-2, 2]).
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var minP: Double?
    public var seed: UInt64?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?

    public init(temperature: Double? = nil, topP: Double? = nil, topK: Int? = nil, minP: Double? = nil, seed: UInt64? = nil,
                presencePenalty: Double? = nil, frequencyPenalty: Double? = nil) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.seed = seed
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
    }
}

public enum GenerationEvent: Sendable, Equatable {
    /// One sampled token and the text it completes. The text may be empty while the bytes of a
    /// multi-byte character are still incomplete; an end-of-generation token is not sent.
    case token(String)
    /// The end: `completionTokens` counts every token sampled (an end-of-generation token too),
    /// for `usage.completion_tokens`.
    case finished(FinishReason, completionTokens: Int)
}

public enum FinishReason: String, Sendable, Equatable {
    /// An end-of-generation token (or, decided by the server, a stop string).
    case stop
    /// `maxTokens` reached, or the context is full.
    case length
}

/// Errors a backend throws to choose the response status.
public enum BackendError: Error, Sendable, Equatable {
    /// The request cannot be served as asked (400).
    case invalidRequest(String)
    /// No capacity now (503 with Retry-After); the client may retry.
    case overloaded(String)
    /// Still loading (503).
    case notReady
}
