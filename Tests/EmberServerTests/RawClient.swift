import Foundation
import Glibc
import XCTest

/// A test client on a plain socket: sends exactly the bytes given and reads responses back,
/// so tests can send what no well-behaved client would.
final class RawClient {
    let descriptor: Int32
    private var buffer: [UInt8] = []

    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }

        func json() throws -> [String: Any] {
            let value = try JSONSerialization.jsonObject(with: Data(body))
            guard let object = value as? [String: Any] else { throw ClientError("body is not a JSON object: \(text)") }
            return object
        }

        /// The `error` object of an OpenAI-shaped error body.
        func error() throws -> [String: Any] {
            guard let error = try json()["error"] as? [String: Any] else { throw ClientError("no error object in \(text)") }
            return error
        }
    }

    struct ClientError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// `receiveBuffer`: a small receive window, set before connecting (for clients that stall).
    /// `timeout`: the longest a read may wait for the server.
    init(port: Int, receiveBuffer: Int32? = nil, timeout: Int = 10) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw ClientError("socket failed") }
        if var size = receiveBuffer {
            setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(descriptor)
            throw ClientError("connect to \(port) failed: errno \(errno)")
        }
        // No test waits this long unless the server is broken (or the machine very busy).
        var receiveTimeout = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &receiveTimeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw ClientError("send failed: errno \(errno)") }
            offset += sent
        }
    }

    /// Bytes read so far and not yet consumed, plus one more read; nil at end of stream.
    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count == 0 { return false }
        guard count > 0 else { throw ClientError("recv failed: errno \(errno)") }
        buffer += chunk[0..<count]
        return true
    }

    /// True when the server has closed the connection (reads end) within the receive timeout.
    func isClosedByServer() -> Bool {
        while true {
            guard let more = try? fill() else { return false }
            if !more { return true }
        }
    }

    private func readLine() throws -> String {
        while true {
            if let end = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 1)
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            guard try fill() else { throw ClientError("connection closed mid-line") }
        }
    }

    private func readBytes(_ count: Int) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill() else { throw ClientError("connection closed mid-body") }
        }
        defer { buffer.removeFirst(count) }
        return Array(buffer[..<count])
    }

    /// Status line and fields (names in lower case).
    func readHead() throws -> (status: Int, headers: [String: String]) {
        var statusLine = try readLine()
        var status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
        var headers: [String: String] = [:]
        while true {
            let line = try readLine()
            if line.isEmpty {
                if status == 100 {  // an interim response: the real one follows
                    statusLine = try readLine()
                    status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0
                    continue
                }
                return (status, headers)
            }
            let parts = line.split(separator: ":", maxSplits: 1)
            headers[parts[0].lowercased()] = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : ""
        }
    }

    /// One whole response; `onChunk` sees each chunk of a chunked body as it arrives.
    func readResponse(onChunk: (([UInt8]) throws -> Bool)? = nil) throws -> Response {
        let (status, headers) = try readHead()
        var body: [UInt8] = []
        if let length = headers["content-length"].flatMap(Int.init) {
            body = try readBytes(length)
        } else if headers["transfer-encoding"] == "chunked" {
            while true {
                guard let size = Int(try readLine(), radix: 16) else { throw ClientError("bad chunk size") }
                if size == 0 {
                    _ = try readLine()
                    break
                }
                let chunk = try readBytes(size)
                _ = try readBytes(2)
                body += chunk
                if let onChunk, try !onChunk(chunk) { return Response(status: status, headers: headers, body: body) }
            }
        } else {
            while try fill() {}
            body = buffer
            buffer.removeAll()
        }
        return Response(status: status, headers: headers, body: body)
    }

    /// Sends one request with the fields a client always sends.
    func request(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) throws -> Response {
        try send(Self.requestText(method, path, body: body, headers: headers))
        return try readResponse()
    }

    static func requestText(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) -> String {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
        return text + "\r\n" + (body ?? "")
    }
}

/// The `data:` payloads of a server-sent event stream, in order.
func eventPayloads(_ body: [UInt8]) -> [String] {
    String(decoding: body, as: UTF8.self).components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { event in
        event.split(separator: "\n").filter { $0.hasPrefix("data: ") }.map { $0.dropFirst(6) }.joined(separator: "\n")
    }
}

func jsonObject(_ text: String) throws -> [String: Any] {
    guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        throw RawClient.ClientError("not a JSON object: \(text)")
    }
    return object
}
