import Foundation

/// Problems with a model beyond its GGUF structure, and with what is asked of it.
public enum ModelError: Error, Equatable, LocalizedError, CustomStringConvertible {
    case unsupportedArchitecture(path: String, architecture: String, supported: [String])
    case badHyperparameter(path: String, key: String, value: String, expected: String)
    case contextOverflow(needed: Int, context: Int)
    case invalidToken(id: Int, vocabularySize: Int)

    public var description: String {
        switch self {
        case .unsupportedArchitecture(let path, let architecture, let supported):
            return "\(path): architecture \(SafeText.quoted(architecture)) (metadata \"general.architecture\") is not supported "
                + "(Ember runs \(supported.joined(separator: ", ")))"
        case .badHyperparameter(let path, let key, let value, let expected):
            return "\(path): metadata \(SafeText.quoted(key)) is \(SafeText.escaped(value)), expected \(expected)"
        case .contextOverflow(let needed, let context):
            return "the sequence needs \(needed) positions but the context holds \(context)"
        case .invalidToken(let id, let vocabularySize):
            return "token id \(id) is outside the vocabulary (0..<\(vocabularySize))"
        }
    }

    public var errorDescription: String? { description }
}
