@testable import EmberServer
import XCTest

final class HTTPRequestParserTests: XCTestCase {
    static let post = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + "Content-Length: 17\r\n\r\n{\"messages\": [1]}"

    /// All the requests in `text` fed at once.
    private func parseAll(_ text: String, limits: HTTPLimits = HTTPLimits()) throws(HTTPRequestError) -> [HTTPRequest] {
        var parser = HTTPRequestParser(limits: limits)
        parser.append(Array(text.utf8))
        var requests: [HTTPRequest] = []
        while let request = try parser.nextRequest() { requests.append(request) }
        return requests
    }

    private func parseError(_ text: String, limits: HTTPLimits = HTTPLimits()) -> HTTPRequestError? {
        do {
            _ = try parseAll(text, limits: limits)
            return nil
        } catch {
            return error
        }
    }

    func testParsesARequestWithBody() throws {
        let requests = try parseAll(Self.post)
        XCTAssertEqual(requests.count, 1)
        let request = requests[0]
        XCTAssertEqual(request.method, "POST")
        XCTAssertEqual(request.target, "/v1/chat/completions?x=1")
        XCTAssertEqual(request.path, "/v1/chat/completions")
        XCTAssertEqual(request.version, .http1_1)
        XCTAssertEqual(request.headers["content-type"], "application/json")
        XCTAssertEqual(request.headers["CONTENT-TYPE"], "application/json")
        XCTAssertEqual(String(decoding: request.body, as: UTF8.self), "{\"messages\": [1]}")
        XCTAssertTrue(request.keepAlive)
    }

    /// Whatever the split of the bytes into reads, the same request comes out, only once the
    /// last byte is in, and the parser is empty after it.
    func testSplitAtEveryByteBoundary() throws {
        let bytes = Array(Self.post.utf8)
        let whole = try parseAll(Self.post)[0]
        for split in 0...bytes.count {
            var parser = HTTPRequestParser()
            parser.append(bytes[..<split])
            let early = try parser.nextRequest()
            XCTAssertEqual(early == nil, split < bytes.count, "split at \(split)")
            parser.append(bytes[split...])
            let request = try early ?? parser.nextRequest()
            XCTAssertEqual(request, whole, "split at \(split)")
            XCTAssertEqual(parser.bufferedByteCount, 0)
            XCTAssertFalse(parser.isMidRequest)
        }
        var parser = HTTPRequestParser()
        var received: [HTTPRequest] = []
        for byte in bytes {
            parser.append([byte])
            if let request = try parser.nextRequest() { received.append(request) }
        }
        XCTAssertEqual(received, [whole])
    }

    func testPipelinedRequestsComeOutInOrder() throws {
        let first = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
        let third = "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        let text = first + Self.post + third
        let requests = try parseAll(text)
        XCTAssertEqual(requests.map(\.path), ["/health", "/v1/chat/completions", "/metrics"])
        XCTAssertEqual(requests.map(\.keepAlive), [true, true, false])

        var parser = HTTPRequestParser()
        var byteByByte: [HTTPRequest] = []
        for byte in text.utf8 {
            parser.append([byte])
            while let request = try parser.nextRequest() { byteByByte.append(request) }
        }
        XCTAssertEqual(byteByByte, requests)
    }

    func testConnectionPersistenceFollowsTheVersion() throws {
        XCTAssertFalse(try parseAll("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")[0].keepAlive)
        XCTAssertFalse(try parseAll("GET / HTTP/1.0\r\n\r\n")[0].keepAlive)
        XCTAssertTrue(try parseAll("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0].keepAlive)
        XCTAssertTrue(try parseAll("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, keep-alive\r\n\r\n")[0].keepAlive)
    }

    func testLenientWhereItIsSafe() throws {
        // Empty lines before a request, bare LF line ends, spaces around a value, absolute form.
        let request = try parseAll("\r\n\n\r\nGET http://example.com/v1/models HTTP/1.1\nHost:   a  \n\n")
        XCTAssertEqual(request.count, 1)
        XCTAssertEqual(request[0].path, "/v1/models")
        XCTAssertEqual(request[0].headers["host"], "a")
        XCTAssertEqual(try parseAll("GET http://example.com HTTP/1.1\r\nHost: a\r\n\r\n")[0].target, "/")
        XCTAssertEqual(try parseAll("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")[0].target, "*")
    }

    func testHeaderLimits() {
        let limits = HTTPLimits(maxHeaderBytes: 256, maxHeaderFields: 4, maxBodyBytes: 1000)
        let long = "GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + String(repeating: "x", count: 300) + "\r\n\r\n"
        XCTAssertEqual(parseError(long, limits: limits), .headersTooLarge)
        XCTAssertEqual(parseError(long, limits: limits)?.statusCode, 431)
        // Detected before the head ends: a client cannot make the server buffer more.
        var parser = HTTPRequestParser(limits: limits)
        parser.append(Array(String(repeating: "a", count: 257).utf8))
        XCTAssertThrowsError(try parser.nextRequest()) { XCTAssertEqual($0 as? HTTPRequestError, .headersTooLarge) }
        // Empty lines count against the limit too.
        XCTAssertEqual(parseError(String(repeating: "\r\n", count: 200), limits: limits), .headersTooLarge)
        let many = "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<4).map { "X-\($0): y\r\n" }.joined() + "\r\n"
        XCTAssertEqual(parseError(many, limits: limits), .headersTooLarge)
        let four = "GET / HTTP/1.1\r\nHost: a\r\n" + (0..<3).map { "X-\($0): y\r\n" }.joined() + "\r\n"
        XCTAssertNil(parseError(four, limits: limits))
    }

    func testBodyLimitIsCheckedAtTheHead() {
        let limits = HTTPLimits(maxBodyBytes: 100)
        let text = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"
        XCTAssertEqual(parseError(text, limits: limits), .bodyTooLarge(declared: 101))
        XCTAssertEqual(parseError(text, limits: limits)?.statusCode, 413)
        let huge = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n"
        XCTAssertEqual(parseError(huge, limits: limits)?.statusCode, 413)
        XCTAssertNil(parseError("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + String(repeating: "b", count: 100),
                                limits: limits))
    }

    func testTransferEncodingIsRefused() {
        let text = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        XCTAssertEqual(parseError(text), .lengthRequired)
        XCTAssertEqual(parseError(text)?.statusCode, 411)
        // With a Content-Length too (a smuggling attempt): still refused.
        XCTAssertEqual(parseError("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"),
                       .lengthRequired)
    }

    func testBadRequestsAreRefused() {
        let bad = [
            "GET / HTTP/1.1\r\n\r\n",  // no Host
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            "GET /\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET relative HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\u{7F}b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\u{0}b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            "GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
            "\u{16}\u{03}\u{01}\u{02}\u{00}\u{01}\u{00}\u{01}\u{fc}\u{03}\u{03}\r\n\r\n",  // a TLS hello, roughly
        ]
        for text in bad {
            XCTAssertEqual(parseError(text)?.statusCode, 400, "\(text.debugDescription)")
        }
        XCTAssertEqual(parseError("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), .unsupportedVersion("HTTP/2.0"))
        XCTAssertEqual(parseError("GET / HTTP/2.0\r\nHost: a\r\n\r\n")?.statusCode, 505)
    }

    func testAnErrorSticks() {
        var parser = HTTPRequestParser()
        parser.append(Array("BAD\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        XCTAssertThrowsError(try parser.nextRequest())
        XCTAssertThrowsError(try parser.nextRequest())
    }

    func testExpectContinue() throws {
        var parser = HTTPRequestParser()
        parser.append(Array("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".utf8))
        XCTAssertNil(try parser.nextRequest())
        XCTAssertTrue(parser.isHeadComplete)
        XCTAssertTrue(parser.awaitsContinue)
        parser.markContinueAnswered()
        XCTAssertFalse(parser.awaitsContinue)
        parser.append(Array("ok".utf8))
        XCTAssertEqual(try parser.nextRequest()?.body, Array("ok".utf8))
        XCTAssertFalse(parser.awaitsContinue)
    }

    /// Mutations of valid requests (seeded, so a failure repeats): the parser never traps, and
    /// feeding the same bytes in random pieces gives the same requests or the same error.
    func testMutatedInputsNeverTrapAndParseTheSameInPieces() {
        var random = SplitMix(seed: 0x5EED)
        let seeds = [Self.post, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n" + Self.post, "GET / HTTP/1.0\r\n\r\n"].map { Array($0.utf8) }
        let alphabet = Array("\r\n :0123456789-,GETPOSHTP/1.\u{0}\u{7F}\u{FF}aZ".utf8)
        let limits = HTTPLimits(maxHeaderBytes: 128, maxHeaderFields: 8, maxBodyBytes: 64)
        for _ in 0..<3000 {
            var bytes = seeds[Int(random.next() % UInt64(seeds.count))]
            for _ in 0..<(1 + random.next() % 4) {
                let position = Int(random.next() % UInt64(bytes.count + 1))
                switch random.next() % 3 {
                case 0: bytes.insert(alphabet[Int(random.next() % UInt64(alphabet.count))], at: position)
                case 1: if position < bytes.count { bytes.remove(at: position) }
                default: if position < bytes.count { bytes[position] = alphabet[Int(random.next() % UInt64(alphabet.count))] }
                }
            }
            let whole = outcome(of: [bytes[...]], limits: limits)
            var pieces: [ArraySlice<UInt8>] = []
            var start = 0
            while start < bytes.count {
                let end = min(bytes.count, start + 1 + Int(random.next() % 16))
                pieces.append(bytes[start..<end])
                start = end
            }
            XCTAssertEqual(outcome(of: pieces, limits: limits), whole, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
        }
    }

    private func outcome(of pieces: [ArraySlice<UInt8>], limits: HTTPLimits) -> String {
        var parser = HTTPRequestParser(limits: limits)
        var requests: [HTTPRequest] = []
        do {
            for piece in pieces {
                parser.append(piece)
                while let request = try parser.nextRequest() { requests.append(request) }
            }
            return "\(requests.map { "\($0.method) \($0.target) \($0.body)" }) rest \(parser.bufferedByteCount)"
        } catch {
            // Errors found mid-way may differ only by how much was buffered; the status must not.
            return "\(requests.map { "\($0.method) \($0.target) \($0.body)" }) error \(error.statusCode)"
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a seeded generator for repeatable test inputs.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E9B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
