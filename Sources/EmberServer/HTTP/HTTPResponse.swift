/// A response with its whole body known; streamed responses are written by `HTTPExchange`.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Fields besides Content-Length, Connection and Transfer-Encoding, which the writer sets.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func text(_ status: Int, _ text: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", contentType)], body: Array(text.utf8))
    }

    public static func json(_ status: Int, _ body: [UInt8]) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
    }

    /// How the body's end is known.
    enum Framing {
        case length(Int)
        /// Chunked transfer coding (HTTP/1.1): the connection can carry more requests after it.
        case chunked
        /// The body ends when the connection closes (an HTTP/1.0 client's stream).
        case untilClose
    }

    /// Status line and fields.
    func head(keepAlive: Bool, framing: Framing) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(HTTPStatus.reason(status))\r\nServer: ember\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        switch framing {
        case .length(let count): text += "Content-Length: \(count)\r\n"
        case .chunked: text += "Transfer-Encoding: chunked\r\n"
        case .untilClose: break
        }
        text += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return Array(text.utf8)
    }

    /// Head and body of a complete response.
    func serialized(keepAlive: Bool) -> [UInt8] {
        head(keepAlive: keepAlive, framing: .length(body.count)) + body
    }
}

enum HTTPStatus {
    static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status \(status)"
        }
    }
}

/// Chunked transfer coding (RFC 9112 §7.1): how a response of unknown length is framed so the
/// connection can carry further requests after it.
enum ChunkedEncoding {
    static func chunk(_ bytes: [UInt8]) -> [UInt8] {
        precondition(!bytes.isEmpty, "an empty chunk would end the body")
        return Array((String(bytes.count, radix: 16) + "\r\n").utf8) + bytes + Array("\r\n".utf8)
    }

    static let end: [UInt8] = Array("0\r\n\r\n".utf8)
}

/// Server-sent events framing (the `text/event-stream` format of the HTML standard, §9.2).
public enum ServerSentEvent {
    /// One event carrying `data`: a `data:` line per line of it, then an empty line.
    public static func frame(_ data: String) -> [UInt8] {
        var text = ""
        var rest = Substring(data)
        // Any of CRLF, LF or CR ends a line in an event stream, so each becomes its own field.
        while let end = rest.firstIndex(where: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" }) {
            text += "data: \(rest[..<end])\n"
            rest = rest[rest.index(after: end)...]
        }
        text += "data: \(rest)\n\n"
        return Array(text.utf8)
    }
}
