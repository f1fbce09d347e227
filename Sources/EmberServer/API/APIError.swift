import Foundation

/// A refusal in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`, which the
/// `openai` clients turn into their typed exceptions by status.
struct APIError: Error, Equatable {
    var status: Int
    var type: String
    var code: String
    var message: String
    var param: String?

    static func invalidRequest(_ message: String, code: String = "invalid_request", param: String? = nil) -> APIError {
        APIError(status: 400, type: "invalid_request_error", code: code, message: message, param: param)
    }

    static func unsupported(_ message: String, param: String) -> APIError {
        APIError(status: 400, type: "invalid_request_error", code: "unsupported_parameter", message: message, param: param)
    }

    static func unavailable(_ message: String, code: String) -> APIError {
        APIError(status: 503, type: "unavailable_error", code: code, message: message)
    }

    static func server(_ message: String) -> APIError {
        APIError(status: 500, type: "server_error", code: "internal_error", message: message)
    }

    /// The error for a status the HTTP layer chose (unreadable, slow or surplus requests).
    static func transport(status: Int, message: String) -> APIError {
        let code = switch status {
        case 408: "request_timeout"
        case 411: "length_required"
        case 413: "body_too_large"
        case 431: "headers_too_large"
        case 503: "overloaded"
        case 505: "http_version_not_supported"
        case 500: "internal_error"
        default: "bad_request"
        }
        let type = status >= 500 ? (status == 503 ? "unavailable_error" : "server_error") : "invalid_request_error"
        return APIError(status: status, type: type, code: code, message: message)
    }

    var json: [UInt8] {
        struct Envelope: Encodable {
            struct Body: Encodable {
                let message: String
                let type: String
                let param: String?
                let code: String

                func encode(to encoder: any Encoder) throws {
                    var container = encoder.container(keyedBy: CodingKeys.self)
                    try container.encode(message, forKey: .message)
                    try container.encode(type, forKey: .type)
                    try container.encode(param, forKey: .param)  // null when absent, as OpenAI sends it
                    try container.encode(code, forKey: .code)
                }

                enum CodingKeys: String, CodingKey { case message, type, param, code }
            }

            let error: Body
        }
        return encodeJSON(Envelope(error: .init(message: message, type: type, param: param, code: code)))
    }

    var response: HTTPResponse {
        var response = HTTPResponse.json(status, json)
        if status == 401 { response.headers.append(("WWW-Authenticate", "Bearer")) }
        if status == 503 { response.headers.append(("Retry-After", "1")) }
        return response
    }
}

/// JSON of a value the server built (its encoding cannot fail: plain strings and numbers).
func encodeJSON(_ value: some Encodable) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.withoutEscapingSlashes]
    do {
        return Array(try encoder.encode(value))
    } catch {
        preconditionFailure("encoding a response failed: \(error)")
    }
}

/// Decodes a request body, turning every failure into a 400 that names the field at fault.
func decodeBody<Body: Decodable>(_ type: Body.Type, from bytes: [UInt8]) throws(APIError) -> Body {
    guard String(validating: bytes, as: UTF8.self) != nil else {
        throw .invalidRequest("the request body is not valid UTF-8", code: "invalid_utf8")
    }
    guard !bytes.isEmpty else { throw .invalidRequest("the request body is empty; expected a JSON object", code: "invalid_json") }
    do {
        return try JSONDecoder().decode(Body.self, from: Data(bytes))
    } catch let error as DecodingError {
        // Foundation reports a number that does not fit its field (1e30 or 1.5 where an integer
        // goes) like broken JSON, without a path; well-formed JSON tells the two apart.
        if case .dataCorrupted(let context) = error, context.codingPath.isEmpty,
           (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil {
            throw .invalidRequest("a number does not fit its field (an integer field needs a whole number within range)",
                                  code: "invalid_value")
        }
        throw describe(error)
    } catch {
        throw .invalidRequest("invalid JSON: \(error)", code: "invalid_json")
    }
}

private func describe(_ error: DecodingError) -> APIError {
    func path(_ codingPath: [any CodingKey]) -> String {
        var text = ""
        for key in codingPath {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return text
    }
    switch error {
    case .typeMismatch(let type, let context):
        let field = path(context.codingPath)
        let expected = context.debugDescription.hasPrefix("expected") ? context.debugDescription : "expected \(describe(type))"
        return .invalidRequest(field.isEmpty ? "the body must be a JSON object" : "`\(field)`: \(expected)",
                               code: "invalid_type", param: field.isEmpty ? nil : field)
    case .valueNotFound(let type, let context):
        let field = path(context.codingPath)
        return .invalidRequest("`\(field)` must be \(describe(type)), not null", code: "invalid_type", param: field)
    case .keyNotFound(let key, let context):
        let field = path(context.codingPath + [key])
        return .invalidRequest("missing required field `\(field)`", code: "missing_field", param: field)
    case .dataCorrupted(let context):
        let field = path(context.codingPath)
        if field.isEmpty {
            let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return .invalidRequest("invalid JSON: \(underlying ?? context.debugDescription)", code: "invalid_json")
        }
        return .invalidRequest("`\(field)`: \(context.debugDescription)", code: "invalid_value", param: field)
    @unknown default:
        return .invalidRequest("invalid request body", code: "invalid_json")
    }
}

private func describe(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: "a string"
    case is Bool.Type: "a boolean"
    case is Int.Type, is Int32.Type, is Int64.Type, is UInt64.Type: "an integer"
    case is Double.Type, is Float.Type: "a number"
    case is [Any].Type: "an array"
    case is [String: Any].Type: "an object"
    default: "a value of another type"
    }
}
