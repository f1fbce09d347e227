// An incremental HTTP/1.1 request parser: a value fed bytes as they arrive, handing out complete
// requests in the order they were sent. It does no I/O, so it is tested byte by byte and fuzzed
// (Fuzz/http-request compiles this file alone: it uses the standard library only).
//
// Strict where leniency lets two parsers disagree about where a request ends (RFC 9112 §11.2,
// request smuggling): one SP between the parts of the request line, no space before a field's
// colon, no folded lines, one Content-Length value, no bare CR. Lenient where it costs nothing:
// a bare LF ends a line (RFC 9112 §2.2 allows it) and empty lines before a request are skipped.
//
// Request bodies must come with Content-Length. A Transfer-Encoding (chunked) body is refused with
// 411 Length Required: no OpenAI client sends one, and refusing it leaves one way to frame a body.

/// How much one request may hold.
public struct HTTPLimits: Sendable, Equatable {
    /// Request line plus header fields, in bytes (431 beyond).
    public var maxHeaderBytes: Int
    /// Number of header fields (431 beyond).
    public var maxHeaderFields: Int
    /// Body bytes (413 beyond).
    public var maxBodyBytes: Int

    public init(maxHeaderBytes: Int = 16 * 1024, maxHeaderFields: Int = 100, maxBodyBytes: Int = 4 * 1024 * 1024) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaderFields = maxHeaderFields
        self.maxBodyBytes = maxBodyBytes
    }
}

public enum HTTPVersion: String, Sendable, Equatable {
    case http1_0 = "HTTP/1.0"
    case http1_1 = "HTTP/1.1"
}

/// One header field; the name is kept in lower case (field names are case-insensitive).
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name.lowercased()
        self.value = value
    }
}

/// Header fields in the order they came.
public struct HTTPFields: Sendable, Equatable {
    public private(set) var fields: [HTTPField] = []

    public init(_ fields: [HTTPField] = []) { self.fields = fields }

    public mutating func append(_ field: HTTPField) { fields.append(field) }

    /// The first value of the field `name` (any case).
    public subscript(name: String) -> String? {
        let name = name.lowercased()
        return fields.first { $0.name == name }?.value
    }

    public func values(_ name: String) -> [String] {
        let name = name.lowercased()
        return fields.filter { $0.name == name }.map(\.value)
    }
}

/// A complete request: head and body.
public struct HTTPRequest: Sendable, Equatable {
    public var method: String
    /// The request target as sent (origin form, or the path of an absolute-form target).
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPFields
    public var body: [UInt8]
    /// Whether the client wants the connection kept open after the response.
    public var keepAlive: Bool

    /// The target without its query.
    public var path: String {
        guard let question = target.firstIndex(of: "?") else { return target }
        return String(target[..<question])
    }
}

/// Why a request cannot be read. Each maps to the status the server answers before it closes
/// the connection (after a bad request the byte stream cannot be trusted to resynchronise).
public enum HTTPRequestError: Error, Sendable, Equatable {
    case malformed(String)
    case headersTooLarge
    case bodyTooLarge(declared: Int)
    case lengthRequired
    case unsupportedVersion(String)

    public var statusCode: Int {
        switch self {
        case .malformed: 400
        case .headersTooLarge: 431
        case .bodyTooLarge: 413
        case .lengthRequired: 411
        case .unsupportedVersion: 505
        }
    }

    public var message: String {
        switch self {
        case .malformed(let why): "malformed request: \(why)"
        case .headersTooLarge: "request header fields too large"
        case .bodyTooLarge(let declared): "request body of \(declared) bytes is over the limit"
        case .lengthRequired: "request bodies need Content-Length (Transfer-Encoding is not supported)"
        case .unsupportedVersion(let version): "HTTP version \(version) is not supported"
        }
    }
}

public struct HTTPRequestParser: Sendable {
    public let limits: HTTPLimits

    /// Bytes received and not yet handed out; index 0 is the start of the current request.
    private var buffer: [UInt8] = []
    /// How far the head has been searched for its end, and where the line being searched began.
    private var scanned = 0
    private var lineStart = 0
    /// Where the request line begins (after skipped empty lines).
    private var headStart = 0
    /// A parsed head whose body is still arriving.
    private var pending: PendingHead?
    private var failure: HTTPRequestError?
    private var continueAnswered = false

    private struct PendingHead {
        var request: HTTPRequest
        var bodyStart: Int
        var bodyLength: Int
        var expectsContinue: Bool
    }

    public init(limits: HTTPLimits = HTTPLimits()) { self.limits = limits }

    /// Bytes held for requests not yet complete.
    public var bufferedByteCount: Int { buffer.count }

    /// True when a request has begun to arrive (the connection is not idle between requests).
    public var isMidRequest: Bool { !buffer.isEmpty || pending != nil }

    /// True once the current request's head is read and its body is still arriving.
    public var isHeadComplete: Bool { pending != nil }

    /// True once the head of a request with `Expect: 100-continue` is read and its body is not:
    /// the server should send `100 Continue` (once; then call `markContinueAnswered`).
    public var awaitsContinue: Bool {
        guard let pending, pending.expectsContinue, !continueAnswered else { return false }
        return buffer.count - pending.bodyStart < pending.bodyLength
    }

    public mutating func markContinueAnswered() { continueAnswered = true }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete request, nil while more bytes are needed. After an error every call
    /// throws it again.
    public mutating func nextRequest() throws(HTTPRequestError) -> HTTPRequest? {
        if let failure { throw failure }
        do {
            return try parseNext()
        } catch {
            failure = error
            throw error
        }
    }

    private mutating func parseNext() throws(HTTPRequestError) -> HTTPRequest? {
        if pending == nil {
            guard let headEnd = try findHeadEnd() else { return nil }
            pending = try parseHead(buffer[headStart..<headEnd], bodyStart: headEnd)
        }
        guard let head = pending, buffer.count - head.bodyStart >= head.bodyLength else { return nil }
        var request = head.request
        let bodyEnd = head.bodyStart + head.bodyLength
        request.body = Array(buffer[head.bodyStart..<bodyEnd])
        buffer.removeFirst(bodyEnd)
        pending = nil
        continueAnswered = false
        scanned = 0
        lineStart = 0
        headStart = 0
        return request
    }

    /// The index just past the empty line that ends the head, nil if it has not arrived.
    private mutating func findHeadEnd() throws(HTTPRequestError) -> Int? {
        while scanned < buffer.count {
            let index = scanned
            scanned += 1
            guard buffer[index] == UInt8(ascii: "\n") else { continue }
            let lineEnd = index > lineStart && buffer[index - 1] == UInt8(ascii: "\r") ? index - 1 : index
            let isEmpty = lineEnd == lineStart
            lineStart = index + 1
            if isEmpty {
                // Empty lines before the request line are skipped (RFC 9112 §2.2).
                if headStart == lineEnd { headStart = index + 1; continue }
                guard index + 1 <= limits.maxHeaderBytes else { throw .headersTooLarge }
                return index + 1
            }
        }
        if buffer.count > limits.maxHeaderBytes { throw .headersTooLarge }
        return nil
    }

    private func parseHead(_ head: ArraySlice<UInt8>, bodyStart: Int) throws(HTTPRequestError) -> PendingHead {
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        for index in head.indices where head[index] == UInt8(ascii: "\n") {
            var end = index
            if end > start, head[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            if end > start { lines.append(head[start..<end]) }
            start = index + 1
        }
        guard let requestLine = lines.first else { throw .malformed("no request line") }
        for line in lines where line.contains(UInt8(ascii: "\r")) { throw .malformed("bare CR in the head") }
        guard lines.count - 1 <= limits.maxHeaderFields else { throw .headersTooLarge }

        let (method, target, version) = try Self.parseRequestLine(requestLine)
        var headers = HTTPFields()
        for line in lines.dropFirst() { headers.append(try Self.parseField(line)) }

        if version == .http1_1 {
            guard headers.values("host").count == 1 else { throw .malformed("HTTP/1.1 needs exactly one Host field") }
        }
        if !headers.values("transfer-encoding").isEmpty { throw .lengthRequired }
        let bodyLength = try Self.contentLength(headers, limit: limits.maxBodyBytes)

        let connection = headers.values("connection").flatMap { $0.split(separator: ",") }
            .map { $0.trimmingSpaces().lowercased() }
        let keepAlive = version == .http1_1 ? !connection.contains("close") : connection.contains("keep-alive")
        let expectsContinue = version == .http1_1 && headers["expect"]?.lowercased() == "100-continue"

        let request = HTTPRequest(method: method, target: target, version: version, headers: headers, body: [], keepAlive: keepAlive)
        return PendingHead(request: request, bodyStart: bodyStart, bodyLength: bodyLength, expectsContinue: expectsContinue)
    }

    private static func parseRequestLine(_ line: ArraySlice<UInt8>) throws(HTTPRequestError) -> (String, String, HTTPVersion) {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .malformed("request line must be METHOD SP TARGET SP VERSION")
        }
        guard parts[0].allSatisfy(isTokenByte) else { throw .malformed("bad method") }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw .malformed("bad request target") }
        let method = String(decoding: parts[0], as: UTF8.self)
        var target = String(decoding: parts[1], as: UTF8.self)
        let versionText = String(decoding: parts[2], as: UTF8.self)
        guard let version = HTTPVersion(rawValue: versionText) else {
            if versionText.hasPrefix("HTTP/"), versionText.count == 8 { throw .unsupportedVersion(versionText) }
            throw .malformed("bad HTTP version")
        }
        // Absolute form (RFC 9112 §3.2.2): the server answers for the path alone.
        for scheme in ["http://", "https://"] where target.lowercased().hasPrefix(scheme) {
            let afterScheme = target.dropFirst(scheme.count)
            target = afterScheme.firstIndex(of: "/").map { String(afterScheme[$0...]) } ?? "/"
        }
        guard target.hasPrefix("/") || (target == "*" && method == "OPTIONS") else {
            throw .malformed("request target must start with /")
        }
        return (method, target, version)
    }

    private static func parseField(_ line: ArraySlice<UInt8>) throws(HTTPRequestError) -> HTTPField {
        guard let first = line.first, first != UInt8(ascii: " "), first != UInt8(ascii: "\t") else {
            throw .malformed("folded header line")
        }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .malformed("header line without a colon") }
        let name = line[line.startIndex..<colon]
        guard !name.isEmpty, name.allSatisfy(isTokenByte) else { throw .malformed("bad header name") }
        var value = line[(colon + 1)...]
        while let byte = value.first, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { value = value.dropFirst() }
        while let byte = value.last, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { value = value.dropLast() }
        guard value.allSatisfy({ $0 == UInt8(ascii: "\t") || ($0 >= 0x20 && $0 != 0x7F) }) else {
            throw .malformed("control character in a header value")
        }
        return HTTPField(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
    }

    /// The declared body length: 0 without the field; every copy of the field must agree.
    private static func contentLength(_ headers: HTTPFields, limit: Int) throws(HTTPRequestError) -> Int {
        let values = headers.values("content-length")
        guard let first = values.first else { return 0 }
        guard values.allSatisfy({ $0 == first }) else { throw .malformed("conflicting Content-Length fields") }
        guard !first.isEmpty, first.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw .malformed("Content-Length is not a number")
        }
        // Anything over the limit is refused, so digits beyond it need not be read exactly.
        var length = 0
        for digit in first.utf8 {
            length = length * 10 + Int(digit - UInt8(ascii: "0"))
            if length > limit { throw .bodyTooLarge(declared: Int(first) ?? Int.max) }
        }
        return length
    }

    /// RFC 9110 §5.6.2 tchar.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" { slice = slice.dropFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice = slice.dropLast() }
        return String(slice)
    }
}
