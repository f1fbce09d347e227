@testable import EmberServer
import Foundation
import XCTest

/// The whole server over loopback with raw sockets and the fake backend.
final class ServerEndToEndTests: XCTestCase {
    static let chatBody = #"{"model": "any", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 4}"#

    func testNonStreamedChatCompletion() throws {
        let server = try TestServer()
        defer { server.stop() }
        let response = try server.request("POST", "/v1/chat/completions", body: Self.chatBody)
        XCTAssertEqual(response.status, 200, response.text)
        XCTAssertEqual(response.headers["content-type"], "application/json")
        let json = try response.json()
        XCTAssertTrue((json["id"] as? String)?.hasPrefix("chatcmpl-") == true)
        XCTAssertEqual(json["object"] as? String, "chat.completion")
        XCTAssertEqual(json["model"] as? String, "fake-model")
        XCTAssertNotNil(json["created"] as? Int)
        let choice = try XCTUnwrap((json["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["index"] as? Int, 0)
        XCTAssertEqual(choice["finish_reason"] as? String, "length")
        XCTAssertTrue(choice["logprobs"] is NSNull)
        let message = try XCTUnwrap(choice["message"] as? [String: Any])
        XCTAssertEqual(message["role"] as? String, "assistant")
        XCTAssertEqual(message["content"] as? String, FakeBackend.reply(tokens: 4))
        let usage = try XCTUnwrap(json["usage"] as? [String: Int])
        let promptTokens = fakePromptTokenCount([("system", "Be brief."), ("user", "Hi")])
        XCTAssertEqual(usage, ["prompt_tokens": promptTokens, "completion_tokens": 4, "total_tokens": promptTokens + 4])
        XCTAssertEqual(server.backend.requests.first?.maxTokens, 4)
        XCTAssertEqual(server.backend.requests.first?.promptTokens.count, promptTokens)
    }

    func testStreamedChatCompletion() throws {
        let server = try TestServer(backend: FakeBackend(replyLength: 5))
        defer { server.stop() }
        let body = #"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}], "#
            + #""stream": true, "stream_options": {"include_usage": true}, "max_completion_tokens": 50, "temperature": 0, "seed": -3}"#
        let response = try server.request("POST", "/v1/chat/completions", body: body)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers["content-type"], "text/event-stream")
        XCTAssertEqual(response.headers["transfer-encoding"], "chunked")
        let payloads = eventPayloads(response.body)
        XCTAssertEqual(payloads.last, "[DONE]")
        let chunks = try payloads.dropLast().map(jsonObject)
        XCTAssertEqual(Set(chunks.map { $0["id"] as? String }).count, 1, "one id for the whole stream")
        XCTAssertTrue(chunks.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
        // Every chunk carries usage: null but the last, which has no choices and the usage.
        XCTAssertTrue(chunks.dropLast().allSatisfy { $0["usage"] is NSNull })
        let deltas = chunks.dropLast().compactMap { ($0["choices"] as? [[String: Any]])?.first }
        XCTAssertEqual((deltas.first?["delta"] as? [String: String])?["role"], "assistant")
        let text = deltas.compactMap { ($0["delta"] as? [String: String])?["content"] }.joined()
        XCTAssertEqual(text, FakeBackend.reply(tokens: 5))
        XCTAssertTrue(deltas.dropLast().allSatisfy { $0["finish_reason"] is NSNull })
        XCTAssertEqual(deltas.last?["finish_reason"] as? String, "stop")
        XCTAssertEqual(deltas.last?["delta"] as? [String: String], [:])
        let last = try XCTUnwrap(chunks.last)
        XCTAssertEqual((last["choices"] as? [Any])?.count, 0)
        let promptTokens = fakePromptTokenCount([("user", "Hi\nthere")])
        XCTAssertEqual(last["usage"] as? [String: Int], ["prompt_tokens": promptTokens, "completion_tokens": 5, "total_tokens": promptTokens + 5])
        let sampling = try XCTUnwrap(server.backend.requests.first?.sampling)
        XCTAssertEqual(sampling, SamplingParameters(temperature: 0, seed: UInt64(bitPattern: -3)))
    }

    func testStreamWithoutUsageHasNoUsageField() throws {
        let server = try TestServer()
        defer { server.stop() }
        let body = #"{"messages": [{"role": "user", "content": "Hi"}], "stream": true, "max_tokens": 2}"#
        let payloads = eventPayloads(try server.request("POST", "/v1/chat/completions", body: body).body)
        XCTAssertEqual(payloads.last, "[DONE]")
        XCTAssertTrue(try payloads.dropLast().map(jsonObject).allSatisfy { $0["usage"] == nil })
    }

    func testTextCompletionsStreamedAndNot() throws {
        let server = try TestServer()
        defer { server.stop() }
        let whole = try server.request("POST", "/v1/completions", body: #"{"prompt": ["Once"], "max_tokens": 3}"#).json()
        XCTAssertEqual(whole["object"] as? String, "text_completion")
        XCTAssertTrue((whole["id"] as? String)?.hasPrefix("cmpl-") == true)
        let choice = try XCTUnwrap((whole["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["text"] as? String, FakeBackend.reply(tokens: 3))
        XCTAssertEqual(choice["finish_reason"] as? String, "length")
        XCTAssertEqual((whole["usage"] as? [String: Int])?["prompt_tokens"], 5)  // BOS + 4 scalars

        let streamed = try server.request("POST", "/completions", body: #"{"prompt": "Once", "max_tokens": 3, "stream": true}"#)
        let payloads = eventPayloads(streamed.body)
        XCTAssertEqual(payloads.last, "[DONE]")
        let chunks = try payloads.dropLast().map(jsonObject)
        let texts = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
        XCTAssertEqual(texts.joined(), FakeBackend.reply(tokens: 3))
        XCTAssertEqual((chunks.last?["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String, "length")
    }

    func testStopStringsCutTheReply() throws {
        let server = try TestServer()
        defer { server.stop() }
        // " hel" + "lo" spans two tokens of the script.
        let body = #"{"messages": [{"role": "user", "content": "Hi"}], "stop": ["nothing", "s hel"], "max_tokens": 10}"#
        let json = try server.request("POST", "/v1/chat/completions", body: body).json()
        let choice = try XCTUnwrap((json["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual((choice["message"] as? [String: String])?["content"], "Ember say")
        XCTAssertEqual(choice["finish_reason"] as? String, "stop")
        XCTAssertEqual((json["usage"] as? [String: Int])?["completion_tokens"], 3)
        XCTAssertTrue(waitUntil { server.backend.running == 0 }, "the generation was stopped")

        let streamed = try server.request("POST", "/v1/chat/completions", body: body.replacingOccurrences(of: "\"max_tokens\"", with: "\"stream\": true, \"max_tokens\""))
        let chunks = try eventPayloads(streamed.body).dropLast().map(jsonObject)
        let deltas = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first }
        XCTAssertEqual(deltas.compactMap { ($0["delta"] as? [String: String])?["content"] }.joined(), "Ember say")
        XCTAssertEqual(deltas.last?["finish_reason"] as? String, "stop")
    }

    func testKeepAliveAndPipelining() throws {
        let server = try TestServer()
        defer { server.stop() }
        let client = try server.client()
        for _ in 0..<3 {
            let response = try client.request("POST", "/v1/chat/completions", body: Self.chatBody)
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(response.headers["connection"], "keep-alive")
        }
        XCTAssertEqual(server.server.openConnections, 1)
        // Three requests in one write: three responses, in order, and a streamed one between.
        let streamed = Self.chatBody.replacingOccurrences(of: "\"max_tokens\"", with: "\"stream\": true, \"max_tokens\"")
        try client.send(RawClient.requestText("GET", "/health") + RawClient.requestText("POST", "/v1/chat/completions", body: streamed)
                        + RawClient.requestText("GET", "/v1/models"))
        XCTAssertEqual(try client.readResponse().text, #"{"status":"ok"}"#)
        XCTAssertEqual(eventPayloads(try client.readResponse().body).last, "[DONE]")
        let models = try client.readResponse().json()
        XCTAssertEqual(((models["data"] as? [[String: Any]])?.first)?["id"] as? String, "fake-model")
        // Connection: close is honoured.
        let last = try client.request("GET", "/health", headers: ["Connection": "close"])
        XCTAssertEqual(last.headers["connection"], "close")
        XCTAssertTrue(client.isClosedByServer())
    }

    func testHTTP10StreamEndsWithTheConnection() throws {
        let server = try TestServer()
        defer { server.stop() }
        let client = try server.client()
        let body = #"{"prompt": "a", "max_tokens": 2, "stream": true}"#
        try client.send("POST /v1/completions HTTP/1.0\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        let response = try client.readResponse()
        XCTAssertNil(response.headers["transfer-encoding"])
        XCTAssertEqual(response.headers["connection"], "close")
        XCTAssertEqual(eventPayloads(response.body).last, "[DONE]")
    }

    func testClientLeavingMidStreamCancelsTheGeneration() throws {
        let backend = FakeBackend(replyLength: 10_000, tokenDelay: .milliseconds(10))
        let server = try TestServer(backend: backend)
        defer { server.stop() }
        let client = try server.client()
        let body = #"{"messages": [{"role": "user", "content": "Hi"}], "stream": true}"#
        try client.send(RawClient.requestText("POST", "/v1/chat/completions", body: body))
        var chunks = 0
        _ = try client.readResponse { _ in
            chunks += 1
            return chunks < 4
        }
        XCTAssertEqual(backend.running, 1)
        close(client.descriptor)  // deinit closes again harmlessly (EBADF)
        XCTAssertTrue(waitUntil(.seconds(2)) { backend.cancelled == 1 }, "generation not cancelled")
        XCTAssertEqual(backend.running, 0)
        XCTAssertTrue(waitUntil { server.server.openConnections == 0 })
        let metrics = try server.request("GET", "/metrics").text
        XCTAssertTrue(metrics.contains(#"ember:request_success_total{model_name="fake-model",finished_reason="abort"} 1"#), metrics)
    }

    func testClientLeavingBeforeANonStreamedAnswerCancelsToo() throws {
        let backend = FakeBackend(replyLength: 10_000, tokenDelay: .milliseconds(10))
        let server = try TestServer(backend: backend)
        defer { server.stop() }
        let client = try server.client()
        try client.send(RawClient.requestText("POST", "/v1/chat/completions", body: #"{"messages": [{"role": "user", "content": "Hi"}]}"#))
        XCTAssertTrue(waitUntil { backend.running == 1 })
        shutdown(client.descriptor, Int32(SHUT_RDWR))
        XCTAssertTrue(waitUntil(.seconds(2)) { backend.cancelled == 1 }, "generation not cancelled")
    }

    /// A client that asks for a stream and never reads it: once the socket buffers are full the
    /// writes stall, and after the write timeout the generation is cancelled.
    func testAClientThatStopsReadingIsDropped() throws {
        // 8 KiB a token, a token a millisecond: the socket buffers (a few MiB) fill in about a second.
        let backend = FakeBackend(contextLength: 1_000_000, replyLength: 100_000, tokenDelay: .milliseconds(1), tokenText: String(repeating: "x", count: 8192))
        let server = try TestServer(backend: backend, writeTimeout: .milliseconds(300))
        defer { server.stop() }
        let client = try RawClient(port: server.port, receiveBuffer: 4096)
        try client.send(RawClient.requestText("POST", "/v1/completions", body: #"{"prompt": "a", "stream": true}"#))
        XCTAssertTrue(waitUntil(.seconds(20)) { backend.cancelled == 1 }, "generation not cancelled (\(backend.finished) finished)")
        XCTAssertTrue(waitUntil { server.server.openConnections == 0 })
    }

    func testSlowClientsAreCutOff() throws {
        let server = try TestServer(headerTimeout: .milliseconds(300), idleTimeout: .milliseconds(300))
        defer { server.stop() }
        // A slowloris head: a byte now and then, never finished.
        let slow = try server.client()
        let start = ContinuousClock.now
        try slow.send("POST /v1/chat/completions HTTP/1.1\r\nHo")
        usleep(100_000)
        try? slow.send("s")
        let response = try slow.readResponse()
        XCTAssertEqual(response.status, 408)
        XCTAssertEqual(try response.error()["code"] as? String, "request_timeout")
        XCTAssertTrue(slow.isClosedByServer())
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        // A head with a body that never completes.
        let halfBody = try server.client()
        try halfBody.send("POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        XCTAssertEqual(try halfBody.readResponse().status, 408)
        // An idle kept-alive connection is closed without a word.
        let idle = try server.client()
        XCTAssertEqual(try idle.request("GET", "/health").status, 200)
        XCTAssertTrue(idle.isClosedByServer())
        XCTAssertTrue(waitUntil { server.server.openConnections == 0 })
    }

    func testConnectionBound() throws {
        let server = try TestServer(maxConnections: 2)
        defer { server.stop() }
        let first = try server.client(), second = try server.client()
        XCTAssertEqual(try first.request("GET", "/health").status, 200)
        XCTAssertEqual(try second.request("GET", "/health").status, 200)
        let third = try server.client()
        let refused = try third.readResponse()
        XCTAssertEqual(refused.status, 503)
        XCTAssertEqual(refused.headers["retry-after"], "1")
        XCTAssertEqual(try refused.error()["type"] as? String, "unavailable_error")
        close(first.descriptor)
        XCTAssertTrue(waitUntil { server.server.openConnections == 1 })
        XCTAssertEqual(try server.request("GET", "/health").status, 200)
    }

    func testAPIKey() throws {
        let server = try TestServer(apiKey: "sekrit")
        defer { server.stop() }
        for headers in [[:], ["Authorization": "Bearer wrong"], ["Authorization": "Bearer sekri"], ["Authorization": "sekrit"]] {
            let response = try server.request("POST", "/v1/chat/completions", body: Self.chatBody, headers: headers)
            XCTAssertEqual(response.status, 401, "\(headers)")
            XCTAssertEqual(response.headers["www-authenticate"], "Bearer")
            XCTAssertEqual(try response.error()["code"] as? String, "invalid_api_key")
            XCTAssertEqual(try response.error()["type"] as? String, "authentication_error")
        }
        XCTAssertEqual(try server.request("GET", "/v1/models").status, 401)
        XCTAssertEqual(try server.request("POST", "/tokenize", body: #"{"content": "a"}"#).status, 401)
        XCTAssertEqual(try server.request("POST", "/v1/chat/completions", body: Self.chatBody,
                                          headers: ["Authorization": "Bearer sekrit"]).status, 200)
        XCTAssertEqual(try server.request("GET", "/v1/models", headers: ["authorization": "bearer sekrit"]).status, 200)
        // Open: the page, health checks and scrapes.
        XCTAssertEqual(try server.request("GET", "/health").status, 200)
        XCTAssertEqual(try server.request("GET", "/metrics").status, 200)
        XCTAssertEqual(try server.request("GET", "/").status, 200)
    }

    func testUnknownEndpointAndWrongMethod() throws {
        let server = try TestServer()
        defer { server.stop() }
        let missing = try server.request("GET", "/v2/nothing")
        XCTAssertEqual(missing.status, 404)
        XCTAssertEqual(try missing.error()["code"] as? String, "not_found")
        let wrongMethod = try server.request("GET", "/v1/chat/completions")
        XCTAssertEqual(wrongMethod.status, 405)
        XCTAssertEqual(wrongMethod.headers["allow"], "POST")
        XCTAssertEqual(try wrongMethod.error()["code"] as? String, "method_not_allowed")
        XCTAssertEqual(try server.request("DELETE", "/health").status, 405)
        XCTAssertEqual(try server.request("GET", "/v1/models/fake-model").status, 200)
        XCTAssertEqual(try server.request("GET", "/v1/models/other").status, 404)
        let head = try server.client()
        try head.send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        let (status, headers) = try head.readHead()
        XCTAssertEqual(status, 200)
        XCTAssertEqual(headers["content-type"], "text/html; charset=utf-8")
        XCTAssertNotEqual(headers["content-length"], "0")
    }

    func testTransportLimits() throws {
        let server = try TestServer(limits: HTTPLimits(maxHeaderBytes: 1024, maxHeaderFields: 20, maxBodyBytes: 2048))
        defer { server.stop() }
        let big = #"{"prompt": ""# + String(repeating: "x", count: 3000) + #""}"#
        let tooLarge = try server.request("POST", "/v1/completions", body: big)
        XCTAssertEqual(tooLarge.status, 413)
        XCTAssertEqual(try tooLarge.error()["code"] as? String, "body_too_large")
        let headers = try server.request("GET", "/health", headers: ["X-Big": String(repeating: "y", count: 2000)])
        XCTAssertEqual(headers.status, 431)
        let client = try server.client()
        try client.send("POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        XCTAssertEqual(try client.readResponse().status, 411)
        let garbage = try server.client()
        try garbage.send("HELLO\r\n\r\n")
        let bad = try garbage.readResponse()
        XCTAssertEqual(bad.status, 400)
        XCTAssertEqual(try bad.error()["type"] as? String, "invalid_request_error")
        XCTAssertTrue(garbage.isClosedByServer())
        // Expect: 100-continue gets its interim answer, then the response.
        let expecting = try server.client()
        try expecting.send("POST /tokenize HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 15\r\n\r\n")
        var line = [UInt8](repeating: 0, count: 25)
        XCTAssertEqual(recv(expecting.descriptor, &line, 25, Int32(MSG_WAITALL)), 25)
        XCTAssertEqual(String(decoding: line, as: UTF8.self), "HTTP/1.1 100 Continue\r\n\r\n")
        try expecting.send(#"{"content":"a"}"#)
        XCTAssertEqual(try expecting.readResponse().status, 200)
    }

    func testBadBodiesGetOpenAIErrors() throws {
        let server = try TestServer(backend: FakeBackend(contextLength: 64))
        defer { server.stop() }
        let cases: [(String, String, String)] = [
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}"#, "invalid_json"),
            ("/v1/chat/completions", "", "invalid_json"),
            ("/v1/chat/completions", "[1, 2]", "invalid_type"),
            ("/v1/chat/completions", #"{"messages": "Hi"}"#, "invalid_type"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": 5}]}"#, "invalid_type"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": "5"}"#, "invalid_type"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -1}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1e30}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100000}"#, "context_length_exceeded"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "temperature": 3}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "n": 2}"#, "unsupported_parameter"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "logprobs": true}"#, "unsupported_parameter"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}"#, "unsupported_parameter"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "stream_options": {"include_usage": true}}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "wizard", "content": "Hi"}]}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, "unsupported_parameter"),
            ("/v1/chat/completions", #"{"messages": []}"#, "invalid_value"),
            ("/v1/chat/completions", #"{"model": "x"}"#, "missing_field"),
            ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": ""# + String(repeating: "a", count: 80) + #""}]}"#, "context_length_exceeded"),
            ("/v1/chat/completions", String(repeating: "[", count: 100_000), "invalid_json"),
            ("/v1/completions", #"{"prompt": ["a", "b"]}"#, "unsupported_parameter"),
            ("/v1/completions", #"{"prompt": [1, 2]}"#, "invalid_type"),
            ("/v1/completions", #"{"prompt": "a", "echo": true}"#, "unsupported_parameter"),
            ("/v1/completions", #"{"prompt": "a", "stop": [""]}"#, "invalid_value"),
            ("/detokenize", #"{"tokens": [99999999999]}"#, "invalid_value"),
            ("/detokenize", #"{"tokens": [-5]}"#, "invalid_request"),
            ("/tokenize", #"{"content": "a", "prompt": "b"}"#, "invalid_value"),
        ]
        for (path, body, code) in cases {
            let response = try server.request("POST", path, body: body)
            XCTAssertEqual(response.status, 400, "\(body.prefix(80)): \(response.text)")
            XCTAssertEqual(try response.error()["code"] as? String, code, "\(body.prefix(80)): \(response.text)")
            XCTAssertEqual(try response.error()["type"] as? String, "invalid_request_error")
            XCTAssertNotNil(try response.error()["message"] as? String)
        }
        // Invalid UTF-8, sent as raw bytes.
        let client = try server.client()
        let body: [UInt8] = Array(#"{"prompt": ""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        try client.send(Array("POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        let response = try client.readResponse()
        XCTAssertEqual(response.status, 400)
        XCTAssertEqual(try response.error()["code"] as? String, "invalid_utf8")
        XCTAssertEqual(server.backend.started, 0, "no bad request reached the engine")
        // And the server is still fine.
        XCTAssertEqual(try server.request("GET", "/health").status, 200)
    }

    func testEngineFailures() throws {
        let server = try TestServer()
        defer { server.stop() }
        let body = #"{"messages": [{"role": "user", "content": "FAIL"}], "max_tokens": 5}"#
        let whole = try server.request("POST", "/v1/chat/completions", body: body)
        XCTAssertEqual(whole.status, 500)
        XCTAssertEqual(try whole.error()["type"] as? String, "server_error")
        let streamed = try server.request("POST", "/v1/chat/completions", body: body.replacingOccurrences(of: "}],", with: "}], \"stream\": true,"))
        XCTAssertEqual(streamed.status, 200)
        let payloads = eventPayloads(streamed.body)
        XCTAssertEqual(payloads.last, "[DONE]")
        XCTAssertEqual(((try jsonObject(payloads[payloads.count - 2]))["error"] as? [String: Any])?["type"] as? String, "server_error")
    }

    func testHealthWhileLoadingAndTokenize() throws {
        let backend = FakeBackend()
        backend.readiness = .loading
        let server = try TestServer(backend: backend)
        defer { server.stop() }
        let loading = try server.request("GET", "/health")
        XCTAssertEqual(loading.status, 503)
        XCTAssertEqual(try loading.error()["code"] as? String, "model_loading")
        XCTAssertEqual(try server.request("POST", "/v1/chat/completions", body: Self.chatBody).status, 503)
        backend.readiness = .ready
        XCTAssertEqual(try server.request("GET", "/health").status, 200)

        let tokens = try server.request("POST", "/tokenize", body: #"{"content": "hé", "add_special": false}"#).json()
        XCTAssertEqual(tokens["tokens"] as? [Int], [104, 233])
        XCTAssertEqual(tokens["count"] as? Int, 2)
        XCTAssertEqual(tokens["max_model_len"] as? Int, 256)
        let withBOS = try server.request("POST", "/tokenize", body: #"{"prompt": "h"}"#).json()
        XCTAssertEqual(withBOS["tokens"] as? [Int], [Int(FakeBackend.bos), 104])
        let chat = try server.request("POST", "/tokenize", body: #"{"messages": [{"role": "user", "content": "Hi"}]}"#).json()
        XCTAssertEqual(chat["count"] as? Int, fakePromptTokenCount([("user", "Hi")]))
        let text = try server.request("POST", "/detokenize", body: #"{"tokens": [104, 233]}"#).json()
        XCTAssertEqual(text["content"] as? String, "hé")
        XCTAssertEqual(text["prompt"] as? String, "hé")
    }

    func testMetricsAfterRequests() throws {
        let server = try TestServer(metricsPrefix: "vllm")
        defer { server.stop() }
        XCTAssertEqual(try server.request("POST", "/v1/chat/completions", body: Self.chatBody).status, 200)
        _ = try server.request("GET", "/nope")
        let response = try server.request("GET", "/metrics")
        XCTAssertEqual(response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        let text = response.text
        let promptTokens = fakePromptTokenCount([("system", "Be brief."), ("user", "Hi")])
        for line in [
            "# TYPE vllm:num_requests_running gauge",
            #"vllm:num_requests_running{model_name="fake-model"} 0"#,
            #"vllm:num_requests_waiting{model_name="fake-model"} 0"#,
            #"vllm:kv_cache_usage_perc{model_name="fake-model"} 0"#,
            #"vllm:prompt_tokens_total{model_name="fake-model"} \#(promptTokens)"#,
            #"vllm:generation_tokens_total{model_name="fake-model"} 4"#,
            #"vllm:request_success_total{model_name="fake-model",finished_reason="length"} 1"#,
            #"vllm:time_to_first_token_seconds_count{model_name="fake-model"} 1"#,
            #"vllm:time_to_first_token_seconds_bucket{model_name="fake-model",le="+Inf"} 1"#,
            #"vllm:inter_token_latency_seconds_count{model_name="fake-model"} 3"#,
            #"vllm:e2e_request_latency_seconds_count{model_name="fake-model"} 1"#,
            #"vllm:http_responses_total{model_name="fake-model",code="200"} 1"#,
            #"vllm:http_responses_total{model_name="fake-model",code="404"} 1"#,
        ] {
            XCTAssertTrue(text.contains(line + "\n"), "missing \(line) in\n\(text)")
        }
    }

    /// Many clients streaming at once, each reusing its connection: every reply whole and in
    /// order, nothing left running.
    func testConcurrentStreams() throws {
        let backend = FakeBackend(replyLength: 20, tokenDelay: .milliseconds(2))
        let server = try TestServer(backend: backend, maxConnections: 16)
        defer { server.stop() }
        let port = server.port
        let waits = (0..<12).map { index in
            Thread.detachAndWait { () -> String in
                do {
                    let client = try RawClient(port: port)
                    var texts: [String] = []
                    for round in 0..<3 {
                        let body = #"{"messages": [{"role": "user", "content": "client \#(index) round \#(round)"}], "stream": true}"#
                        let response = try client.request("POST", "/v1/chat/completions", body: body)
                        let payloads = eventPayloads(response.body)
                        guard payloads.last == "[DONE]" else { return "no [DONE]" }
                        texts.append(try payloads.dropLast().map(jsonObject).compactMap {
                            (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: String])?["content"]
                        }.joined())
                    }
                    return texts.allSatisfy { $0 == FakeBackend.reply(tokens: 20) } ? "ok" : "wrong text: \(texts)"
                } catch {
                    return "\(error)"
                }
            }
        }
        XCTAssertEqual(waits.map { $0() }, Array(repeating: "ok", count: 12))
        XCTAssertEqual(backend.started, 36)
        XCTAssertTrue(waitUntil { backend.finished == 36 && backend.running == 0 })
    }

    func testStopFinishesRequestsUnderWayWithinGrace() throws {
        let backend = FakeBackend(replyLength: 5, tokenDelay: .milliseconds(40))
        let server = try TestServer(backend: backend)
        let client = try server.client()
        try client.send(RawClient.requestText("POST", "/v1/chat/completions", body: #"{"messages": [{"role": "user", "content": "Hi"}]}"#))
        XCTAssertTrue(waitUntil { backend.running == 1 })
        let idle = try server.client()
        XCTAssertEqual(try idle.request("GET", "/health").status, 200)
        let stopped = Thread.detachAndWait { server.server.stop(grace: .seconds(5)) }
        let response = try client.readResponse()
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers["connection"], "close")
        XCTAssertEqual(((try response.json()["choices"] as? [[String: Any]])?.first?["message"] as? [String: String])?["content"],
                       FakeBackend.reply(tokens: 5))
        XCTAssertTrue(idle.isClosedByServer())
        XCTAssertTrue(stopped())
        XCTAssertEqual(backend.finished, 1)
        XCTAssertThrowsError(try server.client(), "the listener is closed")
    }

    func testStopCancelsRequestsThatOutliveTheGrace() throws {
        let backend = FakeBackend(replyLength: 10_000, tokenDelay: .milliseconds(10))
        let server = try TestServer(backend: backend)
        let client = try server.client()
        try client.send(RawClient.requestText("POST", "/v1/chat/completions", body: #"{"messages": [{"role": "user", "content": "Hi"}], "stream": true}"#))
        XCTAssertTrue(waitUntil { backend.running == 1 })
        let start = ContinuousClock.now
        XCTAssertTrue(server.server.stop(grace: .milliseconds(200), cancelBound: .seconds(2)))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        XCTAssertTrue(waitUntil { backend.cancelled == 1 })
        XCTAssertTrue(client.isClosedByServer())
    }
}

extension Thread {
    /// Runs `body` on a new thread; the returned closure waits for its result.
    static func detachAndWait<T: Sendable>(_ body: @escaping @Sendable () -> T) -> () -> T {
        let result = ResultBox<T>()
        let thread = Thread {
            result.set(body())
        }
        thread.start()
        return { result.wait() }
    }
}

import Synchronization

final class ResultBox<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    private let done = DispatchSemaphore(value: 0)

    func set(_ newValue: T) {
        value.withLock { $0 = newValue }
        done.signal()
    }

    func wait() -> T {
        done.wait()
        return value.withLock { $0! }
    }
}
