@testable import EmberServer
import XCTest

final class FramingAndMetricsTests: XCTestCase {
    func testServerSentEventFraming() {
        XCTAssertEqual(String(decoding: ServerSentEvent.frame(#"{"a":1}"#), as: UTF8.self), "data: {\"a\":1}\n\n")
        XCTAssertEqual(String(decoding: ServerSentEvent.frame("[DONE]"), as: UTF8.self), "data: [DONE]\n\n")
        // Line breaks inside the data become separate data lines (CRLF, LF and CR alike).
        XCTAssertEqual(String(decoding: ServerSentEvent.frame("a\nb\r\nc\rd"), as: UTF8.self), "data: a\ndata: b\ndata: c\ndata: d\n\n")
        XCTAssertEqual(String(decoding: ServerSentEvent.frame(""), as: UTF8.self), "data: \n\n")
    }

    func testChunkedFraming() {
        XCTAssertEqual(String(decoding: ChunkedEncoding.chunk(Array(String(repeating: "x", count: 26).utf8)), as: UTF8.self),
                       "1a\r\n" + String(repeating: "x", count: 26) + "\r\n")
        XCTAssertEqual(String(decoding: ChunkedEncoding.end, as: UTF8.self), "0\r\n\r\n")
    }

    func testResponseHead() {
        let response = HTTPResponse(status: 431, headers: [("Content-Type", "application/json")], body: Array("{}".utf8))
        XCTAssertEqual(String(decoding: response.serialized(keepAlive: false), as: UTF8.self),
                       "HTTP/1.1 431 Request Header Fields Too Large\r\nServer: ember\r\nContent-Type: application/json\r\n"
                       + "Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        XCTAssertEqual(String(decoding: HTTPResponse(status: 200).head(keepAlive: true, framing: .chunked), as: UTF8.self),
                       "HTTP/1.1 200 OK\r\nServer: ember\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
    }

    func testStopSequencesAcrossPieces() {
        var stops = StopSequences(["</s>", "\n\nUser:"])
        XCTAssertEqual(stops.feed("Hello"), .text("Hello"))
        XCTAssertEqual(stops.feed(" <"), .text(" "))  // "<" may begin "</s>"
        XCTAssertEqual(stops.feed("b>"), .text("<b>"))  // it did not
        XCTAssertEqual(stops.feed("\n"), .text(""))
        XCTAssertEqual(stops.feed("\nUs"), .text(""))
        XCTAssertEqual(stops.feed("er: more"), .stopped(""))

        var earliest = StopSequences(["cd", "b"])
        XCTAssertEqual(earliest.feed("abcd"), .stopped("a"))

        var unmatched = StopSequences(["xyz"])
        XCTAssertEqual(unmatched.feed("ax"), .text("a"))
        XCTAssertEqual(unmatched.feed("y"), .text(""))
        XCTAssertEqual(unmatched.flush(), "xy")

        var none = StopSequences([])
        XCTAssertEqual(none.feed("anything"), .text("anything"))

        // Scalars, not bytes: a held "é" comes out whole.
        var accents = StopSequences(["éa"])
        XCTAssertEqual(accents.feed("café"), .text("caf"))
        XCTAssertEqual(accents.feed("!"), .text("é!"))
    }

    func testMetricsExposition() {
        let registry = MetricRegistry(constantLabels: [("model_name", "m\"1\\\n")])
        let counter = registry.counter("t:requests_total", help: "Requests.\nSecond line \\ ok", labelNames: ["code"])
        let gauge = registry.gauge("t:running", help: "Running.")
        registry.gauge("t:usage", help: "Usage.") { 0.25 }
        let histogram = registry.histogram("t:latency_seconds", help: "Latency.", bounds: [0.1, 1, 2.5])
        _ = registry.counter("t:tokens_total", help: "Tokens.")
        counter.increment(labels: ["200"])
        counter.increment(by: 2, labels: ["404"])
        counter.increment(labels: ["200"])
        gauge.set(3)
        gauge.add(-1)
        for value in [0.05, 0.1, 0.5, 3, 100] { histogram.observe(value) }
        let labels = #"model_name="m\"1\\\n""#
        XCTAssertEqual(registry.render(), """
        # HELP t:requests_total Requests.\\nSecond line \\\\ ok
        # TYPE t:requests_total counter
        t:requests_total{\(labels),code="200"} 2
        t:requests_total{\(labels),code="404"} 2
        # HELP t:running Running.
        # TYPE t:running gauge
        t:running{\(labels)} 2
        # HELP t:usage Usage.
        # TYPE t:usage gauge
        t:usage{\(labels)} 0.25
        # HELP t:latency_seconds Latency.
        # TYPE t:latency_seconds histogram
        t:latency_seconds_bucket{\(labels),le="0.1"} 2
        t:latency_seconds_bucket{\(labels),le="1"} 3
        t:latency_seconds_bucket{\(labels),le="2.5"} 3
        t:latency_seconds_bucket{\(labels),le="+Inf"} 5
        t:latency_seconds_sum{\(labels)} 103.65
        t:latency_seconds_count{\(labels)} 5
        # HELP t:tokens_total Tokens.
        # TYPE t:tokens_total counter
        t:tokens_total{\(labels)} 0

        """)
        XCTAssertEqual(formatMetricValue(.infinity), "+Inf")
        XCTAssertEqual(formatMetricValue(-.infinity), "-Inf")
        XCTAssertEqual(formatMetricValue(.nan), "NaN")
        XCTAssertEqual(formatMetricValue(1e-5), "1e-05")
        XCTAssertTrue(MetricName.isValidMetric("vllm:num_requests_waiting"))
        XCTAssertFalse(MetricName.isValidMetric("9lives"))
        XCTAssertFalse(MetricName.isValidMetric("has space"))
        XCTAssertFalse(MetricName.isValidLabel("a:b"))
    }

    func testServerRefusesABadMetricsPrefixOrEmptyKey() {
        XCTAssertThrowsError(try OpenAIServer(backend: FakeBackend(), configuration: .init(http: .init(port: 0), metricsPrefix: "bad-prefix")))
        XCTAssertThrowsError(try OpenAIServer(backend: FakeBackend(), configuration: .init(http: .init(port: 0), apiKey: "")))
    }

    func testBindFailureIsAnError() throws {
        let server = try TestServer()
        defer { server.stop() }
        XCTAssertThrowsError(try OpenAIServer(backend: FakeBackend(), configuration: .init(http: .init(port: server.port))))
        XCTAssertThrowsError(try OpenAIServer(backend: FakeBackend(), configuration: .init(http: .init(host: "no such host", port: 0))))
    }
}

final class SchemaTests: XCTestCase {
    private func chat(_ json: String) throws(APIError) -> (ChatCompletionBody, GenerationOptions, [ChatTurn]) {
        let body = try decodeBody(ChatCompletionBody.self, from: Array(json.utf8))
        return (body, try body.validatedOptions(), try validatedTurns(body.messages))
    }

    private func failure(_ json: String) -> APIError? {
        do {
            _ = try chat(json)
            return nil
        } catch {
            return error
        }
    }

    func testReadsTheFieldsClientsSend() throws {
        let (body, options, turns) = try chat("""
        {"model": "gpt-4o", "messages": [{"role": "developer", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "x"},
          {"role": "assistant", "content": null}, {"role": "user", "content": "c"}],
         "max_tokens": 10, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
         "seed": 42, "stop": "END", "stream": true, "stream_options": {"include_usage": true}, "n": 1,
         "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u", "logit_bias": {}, "tools": [],
         "response_format": {"type": "text"}, "unknown_field": {"nested": [1, 2]}}
        """)
        XCTAssertEqual(body.model, "gpt-4o")
        XCTAssertEqual(turns, [ChatTurn(role: .system, content: "Be brief."), ChatTurn(role: .user, content: "a\nb"),
                               ChatTurn(role: .assistant, content: ""), ChatTurn(role: .user, content: "c")])
        XCTAssertEqual(options, GenerationOptions(maxTokens: 7, sampling: SamplingParameters(temperature: 0.5, topP: 0.9, topK: 40, minP: 0.05,
                                                                                             seed: 42, presencePenalty: 0.5, frequencyPenalty: -0.5),
                                                  stops: ["END"], stream: true, includeUsage: true))
        let (_, defaults, _) = try chat(#"{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"]}"#)
        XCTAssertEqual(defaults, GenerationOptions(maxTokens: nil, sampling: SamplingParameters(), stops: ["a", "b"], stream: false, includeUsage: false))
    }

    func testErrorsNameTheField() {
        let manyStops = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": ["
            + (0..<17).map { "\"\($0)\"" }.joined(separator: ",") + "]}"
        let cases: [(String, String, String?)] = [
            (#"{"messages": [{"role": "user", "content": 1}]}"#, "invalid_type", "messages[0].content"),
            (#"{"messages": [{"role": "user"}]}"#, "missing_field", "messages[0].content"),
            (#"{"messages": [{"content": "x"}]}"#, "missing_field", "messages[0].role"),
            (#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#, "invalid_type", "stream"),
            (#"{"messages": [{"role": "user", "content": "x"}], "stop": 5}"#, "invalid_type", "stop"),
            (#"{"messages": [{"role": "user", "content": "x"}], "top_p": 0}"#, "invalid_value", "top_p"),
            (#"{"messages": [{"role": "user", "content": "x"}], "top_k": -1}"#, "invalid_value", "top_k"),
            (#"{"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}"#, "invalid_value", "presence_penalty"),
            (#"{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3}"#, "invalid_value", "max_completion_tokens"),
            (#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}"#, "unsupported_parameter", "response_format"),
            (#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}"#, "unsupported_parameter", "logit_bias"),
            (#"{"messages": [{"role": "tool", "content": "x"}]}"#, "unsupported_parameter", "messages[0].role"),
            (manyStops, "invalid_value", "stop"),
            (#"{"messages": null}"#, "invalid_type", "messages"),
        ]
        for (json, code, param) in cases {
            let error = failure(json)
            XCTAssertEqual(error?.status, 400, json)
            XCTAssertEqual(error?.code, code, "\(json): \(String(describing: error))")
            XCTAssertEqual(error?.param, param, "\(json): \(String(describing: error))")
        }
    }

    func testErrorEnvelope() throws {
        let json = try jsonObject(String(decoding: APIError.invalidRequest("bad", code: "x").json, as: UTF8.self))
        let error = try XCTUnwrap(json["error"] as? [String: Any])
        XCTAssertEqual(error["message"] as? String, "bad")
        XCTAssertEqual(error["type"] as? String, "invalid_request_error")
        XCTAssertEqual(error["code"] as? String, "x")
        XCTAssertTrue(error["param"] is NSNull)
    }
}
