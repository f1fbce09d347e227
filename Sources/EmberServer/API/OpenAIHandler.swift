import Foundation

/// Routes requests to the OpenAI-compatible endpoints and answers them through the backend.
final class OpenAIHandler: HTTPHandler {
    let backend: any CompletionBackend
    let apiKey: String?
    let metrics: ServerMetrics
    private let startTime = Int(Date().timeIntervalSince1970)

    init(backend: any CompletionBackend, apiKey: String?, metricsPrefix: String) {
        self.backend = backend
        self.apiKey = apiKey
        metrics = ServerMetrics(prefix: metricsPrefix, modelName: backend.modelID, backend: backend)
    }

    // MARK: routing

    private enum Endpoint {
        case chatPage, health, metrics, models, model(String), chatCompletions, completions, tokenize, detokenize

        /// Endpoints anyone may read even when an API key is set: the page (it asks for the key
        /// itself), health checks and metric scrapes.
        var isOpen: Bool {
            switch self {
            case .chatPage, .health, .metrics: true
            default: false
            }
        }
    }

    /// The endpoint and the methods it takes, for a path.
    private func route(_ path: String) -> (Endpoint, methods: [String])? {
        switch path {
        case "/": (.chatPage, ["GET", "HEAD"])
        case "/health": (.health, ["GET", "HEAD"])
        case "/metrics": (.metrics, ["GET", "HEAD"])
        case "/v1/models", "/models": (.models, ["GET", "HEAD"])
        case "/v1/chat/completions", "/chat/completions": (.chatCompletions, ["POST"])
        case "/v1/completions", "/completions": (.completions, ["POST"])
        case "/tokenize": (.tokenize, ["POST"])
        case "/detokenize": (.detokenize, ["POST"])
        default:
            if path.hasPrefix("/v1/models/"), path.count > "/v1/models/".count {
                (.model(String(path.dropFirst("/v1/models/".count)).removingPercentEncoding ?? ""), ["GET", "HEAD"])
            } else {
                nil
            }
        }
    }

    func handle(_ exchange: HTTPExchange) {
        let request = exchange.request
        guard let (endpoint, methods) = route(request.path) else {
            return respond(exchange, error: APIError(status: 404, type: "invalid_request_error", code: "not_found",
                                                     message: "no endpoint \(request.method) \(request.path)"))
        }
        guard methods.contains(request.method) else {
            var response = APIError(status: 405, type: "invalid_request_error", code: "method_not_allowed",
                                    message: "\(request.path) takes \(methods.joined(separator: ", ")), not \(request.method)").response
            response.headers.append(("Allow", methods.joined(separator: ", ")))
            return respond(exchange, response)
        }
        if !endpoint.isOpen, let apiKey, !Self.isAuthorized(request, key: apiKey) {
            return respond(exchange, error: APIError(status: 401, type: "authentication_error", code: "invalid_api_key",
                                                     message: "missing or wrong API key (send Authorization: Bearer KEY)"))
        }
        do throws(APIError) {
            switch endpoint {
            case .chatPage: respond(exchange, .text(200, ChatPage.html, contentType: "text/html; charset=utf-8"))
            case .health: try health(exchange)
            case .metrics: respond(exchange, .text(200, metrics.registry.render(), contentType: "text/plain; version=0.0.4; charset=utf-8"))
            case .models: respond(exchange, .json(200, encodeJSON(modelList)))
            case .model(let id): try model(id, exchange)
            case .chatCompletions: try chatCompletion(exchange)
            case .completions: try completion(exchange)
            case .tokenize: try tokenize(exchange)
            case .detokenize: try detokenize(exchange)
            }
        } catch {
            respond(exchange, error: error)
        }
    }

    func errorResponse(status: Int, message: String) -> HTTPResponse {
        metrics.httpResponses.increment(labels: [String(status)])
        return APIError.transport(status: status, message: message).response
    }

    /// Compares in time independent of where the keys differ.
    static func isAuthorized(_ request: HTTPRequest, key: String) -> Bool {
        guard let header = request.headers["authorization"], header.lowercased().hasPrefix("bearer ") else { return false }
        let given = Array(header.dropFirst("bearer ".count).trimmingSpaces().utf8)
        let expected = Array(key.utf8)
        var difference = given.count ^ expected.count
        for index in 0..<expected.count {
            difference |= Int(expected[index] ^ (index < given.count ? given[index] : 0))
        }
        return difference == 0
    }

    private func respond(_ exchange: HTTPExchange, _ response: HTTPResponse) {
        metrics.httpResponses.increment(labels: [String(response.status)])
        exchange.respond(response)
    }

    private func respond(_ exchange: HTTPExchange, error: APIError) {
        respond(exchange, error.response)
    }

    // MARK: simple endpoints

    private func health(_ exchange: HTTPExchange) throws(APIError) {
        if exchange.serverIsStopping { throw .unavailable("the server is stopping", code: "server_stopping") }
        guard backend.readiness == .ready else { throw .unavailable("the model is loading", code: "model_loading") }
        respond(exchange, .json(200, Array(#"{"status":"ok"}"#.utf8)))
    }

    private var modelList: ModelList {
        ModelList(data: [.init(id: backend.modelID, created: startTime, maxModelLength: backend.contextLength)])
    }

    private func model(_ id: String, _ exchange: HTTPExchange) throws(APIError) {
        guard let model = modelList.data.first(where: { $0.id == id }) else {
            throw APIError(status: 404, type: "invalid_request_error", code: "model_not_found", message: "no model \(id)", param: "model")
        }
        respond(exchange, .json(200, encodeJSON(model)))
    }

    private func tokenize(_ exchange: HTTPExchange) throws(APIError) {
        let body = try decodeBody(TokenizeBody.self, from: exchange.request.body)
        try requireReady()
        let given = [body.content != nil, body.prompt != nil, body.messages != nil].filter { $0 }.count
        guard given == 1 else {
            throw .invalidRequest("give exactly one of `content`, `prompt` or `messages`", code: "invalid_value")
        }
        let tokens: [Int32]
        if let messages = body.messages {
            tokens = try chatPromptTokens(try validatedTurns(messages))
        } else {
            let addSpecial = body.addSpecial ?? body.addSpecialTokens ?? true
            tokens = try backendCall { try backend.tokenize(body.content ?? body.prompt ?? "", addSpecial: addSpecial,
                                                            parseSpecial: body.parseSpecial ?? true) }
        }
        respond(exchange, .json(200, encodeJSON(TokenizeResult(tokens: tokens, count: tokens.count, maxModelLength: backend.contextLength))))
    }

    private func detokenize(_ exchange: HTTPExchange) throws(APIError) {
        let body = try decodeBody(DetokenizeBody.self, from: exchange.request.body)
        try requireReady()
        let text = try backendCall { try backend.detokenize(body.tokens) }
        respond(exchange, .json(200, encodeJSON(DetokenizeResult(content: text))))
    }

    // MARK: generation

    private func chatCompletion(_ exchange: HTTPExchange) throws(APIError) {
        let arrival = ContinuousClock.now
        let body = try decodeBody(ChatCompletionBody.self, from: exchange.request.body)
        let options = try body.validatedOptions()
        let turns = try validatedTurns(body.messages)
        try requireReady()
        let prompt = try chatPromptTokens(turns)
        try generate(prompt: prompt, options: options, kind: .chat, arrival: arrival, exchange: exchange)
    }

    private func completion(_ exchange: HTTPExchange) throws(APIError) {
        let arrival = ContinuousClock.now
        let body = try decodeBody(CompletionBody.self, from: exchange.request.body)
        let options = try body.validatedOptions()
        let text = try body.validatedPrompt()
        try requireReady()
        let prompt = try backendCall { try backend.tokenize(text, addSpecial: true, parseSpecial: true) }
        try generate(prompt: prompt, options: options, kind: .text, arrival: arrival, exchange: exchange)
    }

    private func chatPromptTokens(_ turns: [ChatTurn]) throws(APIError) -> [Int32] {
        try backendCall {
            let text = try backend.renderChat(turns)
            return try backend.tokenize(text, addSpecial: true, parseSpecial: true)
        }
    }

    private func requireReady() throws(APIError) {
        guard backend.readiness == .ready else { throw .unavailable("the model is loading", code: "model_loading") }
    }

    /// Checks the prompt against the context, then runs the generation and answers, streamed or
    /// whole.
    private func generate(prompt: [Int32], options: GenerationOptions, kind: GenerationKind, arrival: ContinuousClock.Instant,
                          exchange: HTTPExchange) throws(APIError) {
        let context = backend.contextLength
        guard !prompt.isEmpty else { throw .invalidRequest("the prompt is empty", code: "invalid_value", param: "prompt") }
        guard prompt.count < context else {
            throw .invalidRequest("the prompt has \(prompt.count) tokens; the context holds \(context) (prompt and completion)",
                                  code: "context_length_exceeded", param: kind == .chat ? "messages" : "prompt")
        }
        let maxTokens = options.maxTokens ?? (context - prompt.count)
        guard prompt.count + maxTokens <= context else {
            throw .invalidRequest("the context holds \(context) tokens; the request asks \(prompt.count + maxTokens) "
                                    + "(\(prompt.count) in the prompt, \(maxTokens) to generate)",
                                  code: "context_length_exceeded", param: "max_tokens")
        }
        let request = GenerationRequest(promptTokens: prompt, maxTokens: maxTokens, sampling: options.sampling,
                                        ignoresEndOfGeneration: options.ignoresEndOfGeneration)
        let follower: StreamFollower<GenerationEvent>
        do {
            follower = try exchange.follow(backend.generate(request))
        } catch {
            throw .server("cannot follow the generation: \(error)")
        }
        metrics.promptTokens.increment(by: Double(prompt.count))
        let identity = CompletionIdentity(id: kind.idPrefix + Self.randomID(), created: Int(Date().timeIntervalSince1970),
                                          model: backend.modelID)
        var run = GenerationRun(follower: follower, stops: StopSequences(options.stops), metrics: metrics, arrival: arrival)
        if options.stream {
            stream(&run, identity: identity, kind: kind, includeUsage: options.includeUsage, promptTokens: prompt.count, exchange: exchange)
        } else {
            var text = ""
            let outcome = run.drive { piece in
                text += piece
                return true
            }
            switch outcome {
            case .finished(let reason, let completionTokens):
                let choice = Choice(payload: kind == .chat ? .message(text) : .text(text), finishReason: reason)
                let payload = CompletionPayload(identity: identity, object: kind.object, choices: [choice],
                                                usage: Usage(promptTokens: prompt.count, completionTokens: completionTokens),
                                                writesNullUsage: false)
                respond(exchange, .json(200, encodeJSON(payload)))
            case .interrupted(.serverStopping):
                throw .unavailable("the server stopped before the generation ended", code: "server_stopping")
            case .interrupted(.clientGone):
                return  // nobody to answer
            case .failed(let error):
                throw Self.apiError(error)
            }
        }
    }

    private func stream(_ run: inout GenerationRun, identity: CompletionIdentity, kind: GenerationKind, includeUsage: Bool,
                        promptTokens: Int, exchange: HTTPExchange) {
        func event(_ choices: [Choice], usage: Usage? = nil) -> [UInt8] {
            let payload = CompletionPayload(identity: identity, object: kind.chunkObject, choices: choices, usage: usage,
                                            writesNullUsage: includeUsage)
            return ServerSentEvent.frame(String(decoding: encodeJSON(payload), as: UTF8.self))
        }
        func piece(_ text: String, first: Bool = false) -> Choice {
            Choice(payload: kind == .chat ? .delta(role: first, content: text) : .text(text), finishReason: nil)
        }
        metrics.httpResponses.increment(labels: ["200"])
        do {
            try exchange.beginStream(headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            if kind == .chat { try exchange.sendStreamPart(event([piece("", first: true)])) }
        } catch {
            run.abandon()
            return
        }
        var sendFailure: ExchangeInterruption?
        let outcome = run.drive { text in
            guard sendFailure == nil, !text.isEmpty else { return sendFailure == nil }
            do throws(ExchangeInterruption) {
                try exchange.sendStreamPart(event([piece(text)]))
                return true
            } catch {
                sendFailure = error
                return false
            }
        }
        switch outcome {
        case .finished(let reason, let completionTokens):
            let last = Choice(payload: kind == .chat ? .delta(role: false, content: nil) : .text(""), finishReason: reason)
            var parts = [event([last])]
            if includeUsage { parts.append(event([], usage: Usage(promptTokens: promptTokens, completionTokens: completionTokens))) }
            parts.append(ServerSentEvent.frame("[DONE]"))
            for part in parts { guard (try? exchange.sendStreamPart(part)) != nil else { return } }
            exchange.endStream()
        case .failed(let error):
            // Headers are gone already: the error travels as an event, as OpenAI's streams do.
            _ = try? exchange.sendStreamPart(ServerSentEvent.frame(String(decoding: Self.apiError(error).json, as: UTF8.self)))
            _ = try? exchange.sendStreamPart(ServerSentEvent.frame("[DONE]"))
            exchange.endStream()
        case .interrupted:
            return  // the client left or the server cancels: the connection closes
        }
    }

    private static func apiError(_ error: any Error) -> APIError {
        switch error {
        case BackendError.invalidRequest(let message): .invalidRequest(message)
        case BackendError.overloaded(let message): .unavailable(message, code: "overloaded")
        case BackendError.notReady: .unavailable("the model is loading", code: "model_loading")
        default: .server("generation failed: \(error)")
        }
    }

    private func backendCall<T>(_ body: () throws -> T) throws(APIError) -> T {
        do {
            return try body()
        } catch {
            throw Self.apiError(error)
        }
    }

    private static func randomID() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<3).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }
}

enum GenerationKind {
    case chat, text

    var object: String { self == .chat ? "chat.completion" : "text_completion" }
    var chunkObject: String { self == .chat ? "chat.completion.chunk" : "text_completion" }
    var idPrefix: String { self == .chat ? "chatcmpl-" : "cmpl-" }
}

/// One generation followed to its end: events through the stop strings, token timings into the
/// metrics, the outcome counted.
struct GenerationRun {
    enum Outcome {
        case finished(FinishReason, completionTokens: Int)
        case interrupted(ExchangeInterruption)
        case failed(any Error)
    }

    let follower: StreamFollower<GenerationEvent>
    var stops: StopSequences
    let metrics: ServerMetrics
    let arrival: ContinuousClock.Instant

    /// Runs to the end, handing text to `emit`; `emit` returns false when it can send no more
    /// (the client left), which ends the run as interrupted.
    mutating func drive(_ emit: (String) -> Bool) -> Outcome {
        var tokens = 0
        var lastToken: ContinuousClock.Instant?
        let outcome: Outcome
        loop: while true {
            let event: GenerationEvent?
            do {
                event = try follower.next()
            } catch let interruption as ExchangeInterruption {
                outcome = .interrupted(interruption)
                break
            } catch {
                outcome = .failed(error)
                break
            }
            switch event {
            case .token(let piece):
                tokens += 1
                let now = ContinuousClock.now
                if let lastToken {
                    metrics.interTokenLatency.observe((now - lastToken).seconds)
                } else {
                    metrics.timeToFirstToken.observe((now - arrival).seconds)
                }
                lastToken = now
                switch stops.feed(piece) {
                case .text(let text):
                    guard emit(text) else {
                        follower.cancel()
                        outcome = .interrupted(.clientGone)
                        break loop
                    }
                case .stopped(let text):
                    follower.cancel()  // the generation is not needed further
                    outcome = emit(text) ? .finished(.stop, completionTokens: tokens) : .interrupted(.clientGone)
                    break loop
                }
            case .finished(let reason, let completionTokens):
                outcome = emit(stops.flush()) ? .finished(reason, completionTokens: max(completionTokens, tokens))
                    : .interrupted(.clientGone)
                break loop
            case nil:
                // A stream that ends without saying why: the engine stopped it (end of generation).
                outcome = emit(stops.flush()) ? .finished(.stop, completionTokens: tokens) : .interrupted(.clientGone)
                break loop
            }
        }
        metrics.generationTokens.increment(by: Double(tokens))
        switch outcome {
        case .finished(let reason, _):
            metrics.requestsFinished.increment(labels: [reason.rawValue])
            metrics.requestLatency.observe((ContinuousClock.now - arrival).seconds)
        case .interrupted, .failed:
            metrics.requestsFinished.increment(labels: ["abort"])
        }
        return outcome
    }

    /// The response could not even begin: stop the generation.
    func abandon() {
        follower.cancel()
        metrics.requestsFinished.increment(labels: ["abort"])
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }
}
