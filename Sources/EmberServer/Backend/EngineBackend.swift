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
        state.withLock { $0 = .stopped }
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

/// The loaded half: the model and the sessions generations run on.
final class Engine: Sendable {
    let model: Model
    let contextLength: Int
    let notes: [String]
    private let slots: SessionSlots

    init(model: Model, options: SessionOptions, parallel: Int) throws {
        self.model = model
        let sessions = try (0..<max(1, parallel)).map { _ in try Session(model: model, options: options) }
        contextLength = sessions[0].contextLength
        notes = sessions[0].notes
        slots = SessionSlots(sessions)
    }

    var load: BackendLoad { slots.load }

    func generate(_ request: GenerationRequest) -> AsyncThrowingStream<EmberServer.GenerationEvent, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: EmberServer.GenerationEvent.self, throwing: (any Error).self)
        let settings = GenerationSettings(maxTokens: request.maxTokens, sampling: EngineBackend.samplerSettings(request.sampling),
                                          ignoresEndOfGeneration: request.ignoresEndOfGeneration)
        let (model, slots) = (model, slots)
        let task = Task {
            guard let session = await slots.acquire() else { return continuation.finish() }
            defer { slots.release(session) }
            do {
                await session.reset()
                for try await event in session.generate(.tokens(request.promptTokens), settings) {
                    switch event {
                    case .token(let token):
                        if let id = token.id, model.isEndOfGeneration(id), !request.ignoresEndOfGeneration { continue }
                        continuation.yield(.token(token.text))
                    case .finished(let statistics):
                        let reason: FinishReason = statistics.stopReason == .endOfGeneration ? .stop : .length
                        continuation.yield(.finished(reason, completionTokens: statistics.generatedTokens))
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }
}

/// Sessions free for a generation, and the generations waiting for one (first come, first
/// served).
final class SessionSlots: Sendable {
    private struct State {
        var free: [Session]
        var waiters: [(id: Int, continuation: CheckedContinuation<Session?, Never>)] = []
        var nextID = 0
        var running = 0
    }

    private let state: Mutex<State>
    private let total: Int

    init(_ sessions: [Session]) {
        state = Mutex(State(free: sessions))
        total = sessions.count
    }

    var load: BackendLoad {
        state.withLock { BackendLoad(running: $0.running, waiting: $0.waiters.count, kvCacheUsage: Double($0.running) / Double(total)) }
    }

    /// A free session, after waiting for one; nil when the task was cancelled while waiting.
    func acquire() async -> Session? {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Session?, Never>) in
                let session: Session?? = state.withLock { state in
                    if Task.isCancelled { return .some(nil) }
                    if let session = state.free.popLast() {
                        state.running += 1
                        return .some(session)
                    }
                    state.waiters.append((id, continuation))
                    return .none
                }
                if let session { continuation.resume(returning: session) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0) }
            }
            waiter?.continuation.resume(returning: nil)
        }
    }

    func release(_ session: Session) {
        let waiter = state.withLock { state in
            if state.waiters.isEmpty {
                state.free.append(session)
                state.running -= 1
                return nil as CheckedContinuation<Session?, Never>?
            }
            return state.waiters.removeFirst().continuation
        }
        waiter?.resume(returning: session)
    }
}
