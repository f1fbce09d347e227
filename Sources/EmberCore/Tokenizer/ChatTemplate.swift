/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    public static func system(_ content: String) -> ChatMessage { ChatMessage(role: "system", content: content) }
    public static func user(_ content: String) -> ChatMessage { ChatMessage(role: "user", content: content) }
    public static func assistant(_ content: String) -> ChatMessage { ChatMessage(role: "assistant", content: content) }
}

/// Renders a conversation into a model's prompt format.
///
/// This is not a Jinja engine: it recognises the common template families in the model's
/// `tokenizer.chat_template` text and renders them natively. The rendered text never contains
/// the BOS token; encode it with `addSpecial: true` and `parseSpecial: true`, and the tokenizer
/// adds BOS where the model wants it.
struct ChatTemplate: Sendable, Equatable {
    enum Format: Sendable, Equatable {
        /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM, Qwen). `defaultSystem` is put first
        /// when the conversation has no system message, as some templates do.
        case chatML(defaultSystem: String?)
        /// `<start_of_turn>user\n...<end_of_turn>\n`, assistant as "model", the system message
        /// folded into the first user turn (Gemma).
        case gemma
        /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3).
        case llama3
    }

    let format: Format

    init(format: Format) { self.format = format }

    /// Picks the format from a Jinja template's text; without a recognisable template, from the
    /// architecture (Gemma models get Gemma turns), else ChatML.
    init(template: String?, architecture: String? = nil) {
        if let template, template.contains("<|im_start|>") {
            format = .chatML(defaultSystem: Self.defaultSystemMessage(in: template))
        } else if let template, template.contains("<start_of_turn>") {
            format = .gemma
        } else if let template, template.contains("<|start_header_id|>") {
            format = .llama3
        } else if let architecture, architecture.hasPrefix("gemma") {
            format = .gemma
        } else {
            format = .chatML(defaultSystem: nil)
        }
    }

    /// The format for a tokenizer's model.
    init(for tokenizer: Tokenizer) {
        self.init(template: tokenizer.chatTemplateSource, architecture: tokenizer.architecture)
    }

    /// The prompt for `messages`; with `addGenerationPrompt`, ending with the opening of the
    /// assistant's turn.
    func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        switch format {
        case .chatML(let defaultSystem):
            if let defaultSystem, let first = messages.first, first.role != "system" {
                out += "<|im_start|>system\n\(defaultSystem)<|im_end|>\n"
            }
            for message in messages {
                out += "<|im_start|>\(message.role)\n\(message.content)<|im_end|>\n"
            }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }

        case .gemma:
            // Gemma has no system role: the system text opens the first user turn.
            var system = messages.filter { $0.role == "system" }.map { Self.trim($0.content) }.joined(separator: "\n\n")
            for message in messages where message.role != "system" {
                let role = message.role == "assistant" ? "model" : message.role
                out += "<start_of_turn>\(role)\n"
                if !system.isEmpty, role != "model" {
                    out += system + "\n\n"
                    system = ""
                }
                out += Self.trim(message.content) + "<end_of_turn>\n"
            }
            if addGenerationPrompt { out += "<start_of_turn>model\n" }

        case .llama3:
            for message in messages {
                out += "<|start_header_id|>\(message.role)<|end_header_id|>\n\n\(Self.trim(message.content))<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        }
        return out
    }

    /// Text the template inserts as the system message when there is none, such as SmolLM2's
    /// "You are a helpful AI assistant named SmolLM, trained by Hugging Face": a string literal
    /// holding `<|im_start|>system`, a newline, fixed text, then `<|im_end|>`.
    static func defaultSystemMessage(in template: String) -> String? {
        let opener = "<|im_start|>system"
        var remaining = template[...]
        while let open = remaining.firstRange(of: opener) {
            remaining = remaining[open.upperBound...]
            var rest = remaining
            if rest.hasPrefix("\\n") {
                rest = rest.dropFirst(2)
            } else if rest.hasPrefix("\n") {
                rest = rest.dropFirst()
            } else {
                continue
            }
            guard let close = rest.firstRange(of: "<|im_end|>") else { continue }
            let text = rest[..<close.lowerBound]
            // An expression (`' + message['content'] + '`) is not fixed text.
            guard !text.isEmpty, !text.contains(where: { "'\"{}+".contains($0) }) else { continue }
            return String(text).replacingEscapedNewlines()
        }
        return nil
    }

    /// Jinja's `trim`: whitespace off both ends.
    static func trim(_ text: String) -> String {
        let scalars = text.unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}

private extension String {
    func replacingEscapedNewlines() -> String {
        guard contains("\\n") else { return self }
        return split(separator: "\\n", omittingEmptySubsequences: false).joined(separator: "\n")
    }
}
