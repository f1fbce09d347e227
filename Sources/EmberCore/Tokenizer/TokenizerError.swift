import Foundation

/// Everything that can be wrong with a model's tokenizer metadata. Building a tokenizer from a
/// hostile or broken file reports one of these instead of trapping; text from the file is shown
/// escaped and shortened (`SafeText`).
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    /// A required `tokenizer.*` key is absent.
    case missingMetadata(key: String)
    /// A key holds a value of the wrong type or shape.
    case invalidMetadata(key: String, reason: String)
    /// `tokenizer.ggml.model` names a tokenizer Ember does not implement.
    case unsupportedModel(String)
    /// Two vocabulary entries have the same text, so text → id would be ambiguous.
    case duplicateToken(text: String, firstID: Int, secondID: Int)
    /// A merge rule is malformed or refers to text that is not in the vocabulary.
    case invalidMerge(index: Int, rule: String)
    /// A special-token id (BOS, EOS, ...) lies outside the vocabulary.
    case tokenIDOutOfRange(key: String, id: Int, vocabularySize: Int)

    public var description: String {
        func q(_ text: String) -> String { SafeText.quoted(text) }
        switch self {
        case .missingMetadata(let key):
            return "tokenizer metadata \(q(key)) is missing"
        case .invalidMetadata(let key, let reason):
            return "tokenizer metadata \(q(key)) is invalid: \(reason)"
        case .unsupportedModel(let model):
            return "tokenizer model \(q(model)) is not supported (Ember reads \"gpt2\" and \"llama\")"
        case .duplicateToken(let text, let first, let second):
            return "token text \(q(text)) appears twice in the vocabulary (ids \(first) and \(second))"
        case .invalidMerge(let index, let rule):
            return "merge rule \(index) \(q(rule)) is malformed or refers to unknown tokens"
        case .tokenIDOutOfRange(let key, let id, let size):
            return "tokenizer metadata \(q(key)) = \(id) is outside the vocabulary of \(size) tokens"
        }
    }
}

extension TokenizerError: LocalizedError {
    public var errorDescription: String? { description }
}
