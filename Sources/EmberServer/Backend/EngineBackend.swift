import EmberCore
import Foundation
import Synchronization

/// The engine behind `ember serve`: a model and its sessions, loaded after the server is
/// already listening (so `/health` says 503 while the weights are read), then serving
/// generations through the server's `CompletionBackend` seam.
public final class EngineBackend: CompletionBackend {
    public let modelID: String
    private let requestedContext: Int
    private let state = Mutex<State>(.loading)

    private enum State {
        case loading
        case ready(Engine)
        case stopped
    }

    /// `modelID`: the name clients send and see; `contextLength`: the positions one sequence
    /// may hold, as configured (what `/v1/models` says until the model is loaded).
    public init(modelID: String, contextLength: Int) {
        self.modelID = modelID
        requestedContext = contextLength
    }

    /// Loads the model at `path` and its sessions, then answers requests. Throws (and stays
    /// loading) when the model or the options are wrong.
    public func load(path: String, options: SessionOptions, parallel: Int) throws -> [String] {
        let engine = try Engine(model: try Model(path: path), options: options, parallel: parallel)
        state.withLock { $0 = .ready(engine) }
        return engine.notes
    }

    /// Stops serving: later requests are refused as not ready (the server has stopped by then).
    public func shutdown() {
        let engine = state.withLock { state -> Engine? in
            defer { state = .stopped }
            if case .ready(let engine) = state { return engine }
            return nil
        }
        engine?.shutdown()
    }

    private var engine: Engine? {
        state.withLock { state in
            if case .ready(let engine) = state { return engine }
            return nil
        }
    }

    public var contextLength: Int { engine?.contextLength ?? requestedContext }
    public var readiness: BackendReadiness { engine == nil ? .loading : .ready }
    public var load: BackendLoad { engine?.load ?? BackendLoad() }

    public func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) throws -> [Int32] {
        guard let engine else { throw BackendError.notReady }
        return engine.model.tokenize(text, addSpecial: addSpecial, parseSpecial: parseSpecial)
    }

    public func detokenize(_ tokens: [Int32]) throws -> String {
        guard let engine else { throw BackendError.notReady }
        let vocabulary = engine.model.vocabularySize
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= vocabulary }) {
            throw BackendError.invalidRequest("token \(bad) is not in the vocabulary (0..<\(vocabulary))")
        }
        return engine.model.detokenize(tokens)
    }

    public func renderChat(_ messages: [ChatTurn]) throws -> String {
        guard let engine else { throw BackendError.notReady }
        return engine.model.chatPrompt(messages.map { ChatMessage(role: $0.role.rawValue, content: $0.content) })
    }

    public func generate(_ request: GenerationRequest) -> AsyncThrowingStream<EmberServer.GenerationEvent, any Error> {
        guard let engine else {
            return AsyncThrowingStream { $0.finish(throwing: BackendError.notReady) }
        }
        return engine.generate(request)
    }

    /// The engine's settings for a client's sampling parameters; nil ones keep Ember's defaults
    /// (those of `ember run`).
    static func samplerSettings(_ p: SamplingParameters) -> SamplerSettings {
        var s = SamplerSettings()
        if let t = p.temperature { s.temperature = Float(t) }
        if let v = p.topP { s.topP = Float(v) }
        if let v = p.topK { s.topK = v }
        if let v = p.minP { s.minP = Float(v) }
        if let v = p.presencePenalty { s.presencePenalty = Float(v) }
        if let v = p.frequencyPenalty { s.frequencyPenalty = Float(v) }
        s.seed = p.seed
        return s
    }
}

/// The loaded half: the model and the scheduler its generations run on.
final class Engine: Sendable {
    let model: Model
    let contextLength: Int
    let notes: [String]
    private let session: ParallelSession

    init(model: Model, options: SessionOptions, parallel: Int) throws {
        self.model = model
        session = try ParallelSession(model: model, options: options, slots: parallel)
        contextLength = session.contextLength
        notes = session.notes
    }

    var load: BackendLoad {
        let load = session.load
        return BackendLoad(running: load.running, waiting: load.waiting, kvCacheUsage: load.kvCacheUsage)
    }

    func shutdown() { session.shutdown() }

    /// The scheduler's events as the server's: end-of-generation tokens are not sent (unless the
    /// request goes on through them), and the statistics become the finish reason and count.
    func generate(_ request: GenerationRequest) -> AsyncThrowingStream<EmberServer.GenerationEvent, any Error> {
        let settings = GenerationSettings(maxTokens: request.maxTokens, sampling: EngineBackend.samplerSettings(request.sampling),
                                          ignoresEndOfGeneration: request.ignoresEndOfGeneration)
        let events = IteratorBox(session.generate(.tokens(request.promptTokens), settings).makeAsyncIterator())
        let model = model
        // Cancelling the consumer of this stream cancels the wait below, which ends the
        // scheduler's stream and frees the slot.
        return AsyncThrowingStream {
            while let event = try await events.iterator.next() {
                switch event {
                case .token(let token):
                    if let id = token.id, model.isEndOfGeneration(id), !request.ignoresEndOfGeneration {
                        // Its text is whatever was still held back (empty unless a character was cut).
                        if token.text.isEmpty { continue }
                    }
                    return .token(token.text)
                case .finished(let statistics):
                    let reason: FinishReason = statistics.stopReason == .endOfGeneration ? .stop : .length
                    return .finished(reason, completionTokens: statistics.generatedTokens)
                }
            }
            return nil
        }
    }
}

/// The scheduler's iterator, advanced only by the unfolding stream above, one call at a time.
private final class IteratorBox: @unchecked Sendable {
    var iterator: AsyncThrowingStream<EmberCore.GenerationEvent, any Error>.Iterator

    init(_ iterator: AsyncThrowingStream<EmberCore.GenerationEvent, any Error>.Iterator) { self.iterator = iterator }
}
