// Request bodies of the OpenAI API as Ember reads them, and their validation into what the
// backend is given. Fields Ember does not know are ignored, except those whose meaning it would
// silently drop (tools, logprobs, n > 1, JSON response formats, logit_bias, echo, best_of,
// suffix): those are refused with a 400 naming the field.

/// Any JSON value, read only to know whether it is there.
struct AnyJSON: Decodable, Equatable {
    let isNull: Bool
    let isEmptyArray: Bool

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        isNull = container.decodeNil()
        if !isNull, let array = try? container.decode([AnyJSON].self) {
            isEmptyArray = array.isEmpty
        } else {
            isEmptyArray = false
            if !isNull, (try? container.decode(Bool.self)) == nil, (try? container.decode(Double.self)) == nil,
               (try? container.decode(String.self)) == nil {
                _ = try container.decode([String: AnyJSON].self)
            }
        }
    }
}

/// A string or an array of strings (`stop`; `prompt`).
enum StringOrStrings: Decodable, Equatable {
    case one(String)
    case many([String])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            self = .one(text)
        } else if let texts = try? container.decode([String].self) {
            self = .many(texts)
        } else {
            throw DecodingError.typeMismatch(String.self, .init(codingPath: decoder.codingPath,
                                                                debugDescription: "expected a string or an array of strings"))
        }
    }

    var strings: [String] {
        switch self {
        case .one(let text): [text]
        case .many(let texts): texts
        }
    }
}

struct MessageBody: Decodable, Equatable {
    var role: String
    var content: Content?

    /// A message's content: a string, or an array of parts of which Ember reads the text ones.
    enum Content: Decodable, Equatable {
        case text(String)
        case parts([Part])

        struct Part: Decodable, Equatable {
            var type: String
            var text: String?
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) {
                self = .text(text)
            } else if let parts = try? container.decode([Part].self) {
                self = .parts(parts)
            } else {
                throw DecodingError.typeMismatch(String.self, .init(codingPath: decoder.codingPath,
                                                                    debugDescription: "expected a string or an array of content parts"))
            }
        }
    }
}

/// Sampling and length fields shared by chat and text completions.
struct SamplingFields: Decodable, Equatable {
    var maxTokens: Int?
    var maxCompletionTokens: Int?
    var temperature: Double?
    var topP: Double?
    var topK: Int?
    var minP: Double?
    var seed: Int64?
    var presencePenalty: Double?
    var frequencyPenalty: Double?
    var stop: StringOrStrings?
    var stream: Bool?
    var streamOptions: StreamOptions?
    var n: Int?
    var logitBias: [String: Double]?
    /// llama-server's and vLLM's extension: generate through end-of-generation tokens (benchmarks).
    var ignoreEOS: Bool?

    struct StreamOptions: Decodable, Equatable {
        var includeUsage: Bool?

        enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
    }

    enum CodingKeys: String, CodingKey {
        case maxTokens = "max_tokens", maxCompletionTokens = "max_completion_tokens", temperature, topP = "top_p"
        case topK = "top_k", minP = "min_p", seed, presencePenalty = "presence_penalty"
        case frequencyPenalty = "frequency_penalty", stop, stream, streamOptions = "stream_options", n
        case logitBias = "logit_bias", ignoreEOS = "ignore_eos"
    }
}

struct ChatCompletionBody: Decodable, Equatable {
    var model: String?
    var messages: [MessageBody]
    var sampling: SamplingFields
    var logprobs: Bool?
    var topLogprobs: Int?
    var tools: AnyJSON?
    var responseFormat: ResponseFormat?

    struct ResponseFormat: Decodable, Equatable {
        var type: String
    }

    enum CodingKeys: String, CodingKey {
        case model, messages, logprobs, topLogprobs = "top_logprobs", tools, responseFormat = "response_format"
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        model = try container.decodeIfPresent(String.self, forKey: .model)
        messages = try container.decode([MessageBody].self, forKey: .messages)
        logprobs = try container.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try container.decodeIfPresent(Int.self, forKey: .topLogprobs)
        tools = try container.decodeIfPresent(AnyJSON.self, forKey: .tools)
        responseFormat = try container.decodeIfPresent(ResponseFormat.self, forKey: .responseFormat)
        sampling = try SamplingFields(from: decoder)
    }
}

struct CompletionBody: Decodable, Equatable {
    var model: String?
    var prompt: StringOrStrings
    var sampling: SamplingFields
    var echo: Bool?
    var bestOf: Int?
    var suffix: String?
    var logprobs: Int?

    enum CodingKeys: String, CodingKey {
        case model, prompt, echo, bestOf = "best_of", suffix, logprobs
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        model = try container.decodeIfPresent(String.self, forKey: .model)
        prompt = try container.decode(StringOrStrings.self, forKey: .prompt)
        echo = try container.decodeIfPresent(Bool.self, forKey: .echo)
        bestOf = try container.decodeIfPresent(Int.self, forKey: .bestOf)
        suffix = try container.decodeIfPresent(String.self, forKey: .suffix)
        logprobs = try container.decodeIfPresent(Int.self, forKey: .logprobs)
        sampling = try SamplingFields(from: decoder)
    }
}

/// `/tokenize`: llama-server's `content` or vLLM's `prompt` or `messages` (rendered with the
/// chat template first).
struct TokenizeBody: Decodable, Equatable {
    var content: String?
    var prompt: String?
    var messages: [MessageBody]?
    var addSpecial: Bool?
    var addSpecialTokens: Bool?
    var parseSpecial: Bool?

    enum CodingKeys: String, CodingKey {
        case content, prompt, messages, addSpecial = "add_special", addSpecialTokens = "add_special_tokens"
        case parseSpecial = "parse_special"
    }
}

struct DetokenizeBody: Decodable, Equatable {
    var tokens: [Int32]
}

// MARK: validation

/// What a generation endpoint asks for, checked.
struct GenerationOptions: Equatable {
    /// nil: up to the end of the context.
    var maxTokens: Int?
    var sampling: SamplingParameters
    var stops: [String]
    var stream: Bool
    var includeUsage: Bool
    var ignoresEndOfGeneration = false

    /// Stop strings a request may give (OpenAI allows 4; Ember is less strict).
    static let maxStops = 16
    static let maxStopBytes = 1024
}

extension SamplingFields {
    func validated() throws(APIError) -> GenerationOptions {
        if let n, n != 1 { throw .unsupported("only n = 1 is supported", param: "n") }
        if let logitBias, !logitBias.isEmpty { throw .unsupported("logit_bias is not supported", param: "logit_bias") }

        let limit = maxCompletionTokens ?? maxTokens
        let limitName = maxCompletionTokens != nil ? "max_completion_tokens" : "max_tokens"
        if let limit, limit < 1 {
            throw .invalidRequest("`\(limitName)` must be at least 1, got \(limit)", code: "invalid_value", param: limitName)
        }
        try Self.check(temperature, in: 0...2, "temperature")
        try Self.check(topP, in: 0...1, "top_p")
        if topP == 0 { throw .invalidRequest("`top_p` must be greater than 0", code: "invalid_value", param: "top_p") }
        if let topK, topK < 0 { throw .invalidRequest("`top_k` must be 0 (off) or more", code: "invalid_value", param: "top_k") }
        try Self.check(minP, in: 0...1, "min_p")
        try Self.check(presencePenalty, in: -2...2, "presence_penalty")
        try Self.check(frequencyPenalty, in: -2...2, "frequency_penalty")

        let stops = stop?.strings ?? []
        guard stops.count <= GenerationOptions.maxStops else {
            throw .invalidRequest("at most \(GenerationOptions.maxStops) stop strings", code: "invalid_value", param: "stop")
        }
        for text in stops where text.isEmpty || text.utf8.count > GenerationOptions.maxStopBytes {
            throw .invalidRequest("stop strings must be 1 to \(GenerationOptions.maxStopBytes) bytes", code: "invalid_value", param: "stop")
        }
        let stream = stream ?? false
        if streamOptions != nil, !stream {
            throw .invalidRequest("`stream_options` is only allowed with `stream: true`", code: "invalid_value", param: "stream_options")
        }
        let sampling = SamplingParameters(temperature: temperature, topP: topP, topK: topK, minP: minP,
                                          seed: seed.map { UInt64(bitPattern: $0) },
                                          presencePenalty: presencePenalty, frequencyPenalty: frequencyPenalty)
        return GenerationOptions(maxTokens: limit, sampling: sampling, stops: stops, stream: stream,
                                 includeUsage: streamOptions?.includeUsage ?? false, ignoresEndOfGeneration: ignoreEOS ?? false)
    }

    private static func check(_ value: Double?, in range: ClosedRange<Double>, _ name: String) throws(APIError) {
        guard let value, !range.contains(value) else { return }
        throw .invalidRequest("`\(name)` must be in \(range.lowerBound)...\(range.upperBound), got \(value)",
                              code: "invalid_value", param: name)
    }
}

extension ChatCompletionBody {
    func validatedOptions() throws(APIError) -> GenerationOptions {
        if logprobs == true { throw .unsupported("logprobs are not supported", param: "logprobs") }
        if let topLogprobs, topLogprobs > 0 { throw .unsupported("logprobs are not supported", param: "top_logprobs") }
        if let tools, !tools.isNull, !tools.isEmptyArray { throw .unsupported("tools are not supported", param: "tools") }
        if let responseFormat, responseFormat.type != "text" {
            throw .unsupported("response_format \(responseFormat.type) is not supported; only text", param: "response_format")
        }
        return try sampling.validated()
    }
}

extension CompletionBody {
    func validatedOptions() throws(APIError) -> GenerationOptions {
        if echo == true { throw .unsupported("echo is not supported", param: "echo") }
        if let bestOf, bestOf != 1 { throw .unsupported("only best_of = 1 is supported", param: "best_of") }
        if let suffix, !suffix.isEmpty { throw .unsupported("suffix is not supported", param: "suffix") }
        if let logprobs, logprobs > 0 { throw .unsupported("logprobs are not supported", param: "logprobs") }
        return try sampling.validated()
    }

    /// The one prompt: a string, or an array holding one string. Arrays of several prompts and
    /// token-id prompts are refused.
    func validatedPrompt() throws(APIError) -> String {
        let prompts = prompt.strings
        guard prompts.count == 1 else {
            throw .unsupported("one prompt per request (a string, or an array of one string)", param: "prompt")
        }
        return prompts[0]
    }
}

/// Messages checked into turns: roles system (or developer), user and assistant; content a
/// string or text parts (joined by newlines); assistant content may be null.
func validatedTurns(_ messages: [MessageBody]) throws(APIError) -> [ChatTurn] {
    guard !messages.isEmpty else {
        throw .invalidRequest("`messages` must hold at least one message", code: "invalid_value", param: "messages")
    }
    var turns: [ChatTurn] = []
    for (index, message) in messages.enumerated() {
        let param = "messages[\(index)]"
        let role: ChatTurn.Role
        switch message.role {
        case "system", "developer": role = .system
        case "user": role = .user
        case "assistant": role = .assistant
        case "tool", "function": throw .unsupported("\(message.role) messages are not supported", param: "\(param).role")
        default:
            throw .invalidRequest("`\(param).role` must be system, user or assistant, got \(message.role)",
                                  code: "invalid_value", param: "\(param).role")
        }
        let text: String
        switch message.content {
        case .text(let content):
            text = content
        case .parts(let parts):
            var texts: [String] = []
            for (partIndex, part) in parts.enumerated() {
                guard part.type == "text", let partText = part.text else {
                    throw .unsupported("only text content parts are supported (part of type \(part.type))",
                                       param: "\(param).content[\(partIndex)]")
                }
                texts.append(partText)
            }
            text = texts.joined(separator: "\n")
        case nil:
            guard role == .assistant else {
                throw .invalidRequest("`\(param).content` is required", code: "missing_field", param: "\(param).content")
            }
            text = ""
        }
        turns.append(ChatTurn(role: role, content: text))
    }
    return turns
}
