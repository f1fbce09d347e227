import EmberServer
import Foundation
import Synchronization

/// A deterministic stand-in for the engine: one token per Unicode scalar, a fixed reply script,
/// and a record of every generation it started and how each ended.
final class FakeBackend: CompletionBackend {
    /// The reply, one token per element, repeated as long as asked.
    static let script = ["Ember", " says", " hello", " to", " you", "."]
    /// A token id no scalar has: the fake's BOS.
    static let bos: Int32 = 0x110000

    let modelID = "fake-model"
    let contextLength: Int
    /// Tokens a reply has when max_tokens does not cut it first.
    let replyLength: Int
    /// Time per generated token.
    let tokenDelay: Duration
    /// When set, the text of every token instead of the script's.
    let tokenText: String?

    private struct State {
        var readiness = BackendReadiness.ready
        var running = 0
        var started = 0
        var cancelled = 0
        var finished = 0
        var requests: [GenerationRequest] = []
    }

    private let state = Mutex(State())

    init(contextLength: Int = 256, replyLength: Int = 12, tokenDelay: Duration = .zero, tokenText: String? = nil) {
        self.contextLength = contextLength
        self.replyLength = replyLength
        self.tokenDelay = tokenDelay
        self.tokenText = tokenText
    }

    var readiness: BackendReadiness {
        get { state.withLock { $0.readiness } }
        set { state.withLock { $0.readiness = newValue } }
    }

    var load: BackendLoad { state.withLock { BackendLoad(running: $0.running, waiting: 0, kvCacheUsage: Double($0.running) / 4) } }
    var started: Int { state.withLock { $0.started } }
    var cancelled: Int { state.withLock { $0.cancelled } }
    var finished: Int { state.withLock { $0.finished } }
    var running: Int { state.withLock { $0.running } }
    var requests: [GenerationRequest] { state.withLock { $0.requests } }

    func tokenize(_ text: String, addSpecial: Bool, parseSpecial: Bool) throws -> [Int32] {
        (addSpecial ? [Self.bos] : []) + text.unicodeScalars.map { Int32($0.value) }
    }

    func detokenize(_ tokens: [Int32]) throws -> String {
        var text = String.UnicodeScalarView()
        for token in tokens where token != Self.bos {
            guard token >= 0, let scalar = Unicode.Scalar(UInt32(token)) else {
                throw BackendError.invalidRequest("token \(token) is not in the vocabulary")
            }
            text.append(scalar)
        }
        return String(text)
    }

    func renderChat(_ messages: [ChatTurn]) throws -> String {
        messages.map { "\($0.role.rawValue): \($0.content)\n" }.joined() + "assistant:"
    }

    /// The reply for `maxTokens`: the script's tokens, cut at `maxTokens`.
    static func reply(tokens: Int) -> String {
        (0..<tokens).map { script[$0 % script.count] }.joined()
    }

    func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, any Error> {
        state.withLock {
            $0.started += 1
            $0.running += 1
            $0.requests.append(request)
        }
        // A prompt that spells FAIL makes the engine fail after two tokens.
        let fails = (try? detokenize(request.promptTokens))?.contains("FAIL") ?? false
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GenerationEvent.self, throwing: (any Error).self)
        let count = min(request.maxTokens, replyLength)
        let delay = tokenDelay
        let tokenText = tokenText
        let producer = Task {
            for index in 0..<count {
                if delay > .zero { try? await Task.sleep(for: delay) }
                if Task.isCancelled { return }
                if fails, index == 2 {
                    continuation.finish(throwing: FakeFailure())
                    return
                }
                continuation.yield(.token(tokenText ?? Self.script[index % Self.script.count]))
            }
            continuation.yield(.finished(count == request.maxTokens ? .length : .stop, completionTokens: count))
            continuation.finish()
        }
        continuation.onTermination = { [self] termination in
            producer.cancel()
            self.state.withLock {
                $0.running -= 1
                if case .cancelled = termination { $0.cancelled += 1 } else { $0.finished += 1 }
            }
        }
        return stream
    }

    struct FakeFailure: Error, CustomStringConvertible {
        var description: String { "the fake engine failed on purpose" }
    }
}
