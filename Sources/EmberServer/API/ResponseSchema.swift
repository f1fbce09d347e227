// Response bodies in the shapes OpenAI's API sends, nulls included (`logprobs: null`,
// `finish_reason: null` in chunks, `usage: null` in chunks when usage was asked for), so that
// strict clients parse them.

struct Usage: Encodable, Equatable {
    let promptTokens: Int
    let completionTokens: Int
    var totalTokens: Int { promptTokens + completionTokens }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(promptTokens, forKey: .promptTokens)
        try container.encode(completionTokens, forKey: .completionTokens)
        try container.encode(totalTokens, forKey: .totalTokens)
    }

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens"
    }
}

/// Identity shared by a response and all its chunks.
struct CompletionIdentity {
    let id: String
    let created: Int
    let model: String
}

/// The `choices[]` element of every response kind: a message, a delta, or a text.
struct Choice: Encodable {
    enum Payload {
        case message(String)
        /// `role` is sent in the first chunk only; `content` nil in the last (empty delta).
        case delta(role: Bool, content: String?)
        case text(String)
    }

    let payload: Payload
    let finishReason: FinishReason?

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(0, forKey: .index)
        switch payload {
        case .message(let content):
            try container.encode(["role": "assistant", "content": content], forKey: .message)
        case .delta(let role, let content):
            var delta: [String: String] = [:]
            if role { delta["role"] = "assistant" }
            if let content { delta["content"] = content }
            try container.encode(delta, forKey: .delta)
        case .text(let text):
            try container.encode(text, forKey: .text)
        }
        try container.encodeNil(forKey: .logprobs)
        try container.encode(finishReason?.rawValue, forKey: .finishReason)
    }

    enum CodingKeys: String, CodingKey {
        case index, message, delta, text, logprobs, finishReason = "finish_reason"
    }
}

/// A whole response or one streamed chunk, for chat (`chat.completion`,
/// `chat.completion.chunk`) or text completions (`text_completion` for both).
struct CompletionPayload: Encodable {
    let identity: CompletionIdentity
    let object: String
    let choices: [Choice]
    let usage: Usage?
    /// Whether `usage` is written when nil (chunks of a stream that asked for usage).
    let writesNullUsage: Bool

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(identity.id, forKey: .id)
        try container.encode(object, forKey: .object)
        try container.encode(identity.created, forKey: .created)
        try container.encode(identity.model, forKey: .model)
        try container.encode(choices, forKey: .choices)
        if usage != nil || writesNullUsage { try container.encode(usage, forKey: .usage) }
    }

    enum CodingKeys: String, CodingKey { case id, object, created, model, choices, usage }
}

struct ModelList: Encodable {
    struct Model: Encodable {
        let id: String
        let object = "model"
        let created: Int
        let ownedBy = "ember"
        let maxModelLength: Int

        enum CodingKeys: String, CodingKey {
            case id, object, created, ownedBy = "owned_by", maxModelLength = "max_model_len"
        }
    }

    let object = "list"
    let data: [Model]
}

struct TokenizeResult: Encodable {
    let tokens: [Int32]
    let count: Int
    let maxModelLength: Int

    enum CodingKeys: String, CodingKey { case tokens, count, maxModelLength = "max_model_len" }
}

/// `content` as llama-server answers, `prompt` as vLLM does: both clients read theirs.
struct DetokenizeResult: Encodable {
    let content: String
    var prompt: String { content }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(content, forKey: .content)
        try container.encode(prompt, forKey: .prompt)
    }

    enum CodingKeys: String, CodingKey { case content, prompt }
}
