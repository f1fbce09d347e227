@testable import EmberServer
import EmberCore
import Foundation
import XCTest

/// `ember serve` on the real SmolLM2 model, driven by real clients; `ember run` is the reference
/// for every greedy text.
final class ServeCommandTests: XCTestCase {
    static let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village,",
        "def fibonacci(n):",
        "List three colours:",
        "The meaning of life is",
        "Water boils at",
        "In 1969, astronauts",
        "My favourite recipe for pancakes",
    ]
    static let maxTokens = 40

    /// `ember run`'s greedy text for `prompt` (a user turn of the chat template when `chat`).
    static func runText(_ prompt: String, chat: Bool = false, model: String, tokens: Int = maxTokens) throws -> String {
        let result = try runProgram(ServeProcess.binary.path, ["run", "-m", model, "-p", prompt, "-n", String(tokens), "--temp", "0"]
                                        + (chat ? ["--chat"] : []))
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.hasSuffix("\n"))
        return String(result.stdout.dropLast())
    }

    /// The server's greedy completion of `prompt`.
    static func completion(_ server: ServeProcess, _ prompt: String, tokens: Int = maxTokens) throws -> String {
        let body = try jsonText(["prompt": prompt, "max_tokens": tokens, "temperature": 0])
        let response = try server.request("POST", "/v1/completions", body: body)
        guard response.status == 200 else { throw RawClient.ClientError("status \(response.status): \(response.text)") }
        let choices = try XCTUnwrap(try response.json()["choices"] as? [[String: Any]])
        return try XCTUnwrap(choices.first?["text"] as? String)
    }

    static func jsonText(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    /// Runs `body(i)` for i in 0..<count on threads of their own, all at once.
    static func concurrently<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) -> [Result<T, any Error>] {
        let boxes = (0..<count).map { _ in ResultBox<Result<T, any Error>>() }
        for (i, box) in boxes.enumerated() {
            Thread.detachNewThread { box.set(Result { try body(i) }) }
        }
        return boxes.map { $0.wait() }
    }

    // MARK: greedy output equals `ember run`

    func testGreedyTextEqualsRunAtEveryConcurrency() throws {
        let model = try ServeProcess.smolLM2()
        let references = try Self.prompts.map { try Self.runText($0, model: model) }
        for parallel in [1, 4, 8] {
            let server = try ServeProcess(["-m", model, "--parallel", String(parallel), "--ctx", "256"])
            // All prompts at once: `parallel` run together, the rest wait for a slot.
            let prompts = Self.prompts
            let texts = Self.concurrently(prompts.count) { try Self.completion(server, prompts[$0]) }
            for (i, text) in texts.enumerated() {
                XCTAssertEqual(try text.get(), references[i], "parallel \(parallel), prompt \(prompts[i].debugDescription)")
            }
            XCTAssertEqual(server.terminate(within: 20), 0, server.stderr)
        }
    }

    func testStreamedAndWholeWithCurlAndTheOpenAIPackage() throws {
        let model = try ServeProcess.smolLM2()
        let prompt = Self.prompts[3]
        let plain = try Self.runText(prompt, model: model)
        let chat = try Self.runText(prompt, chat: true, model: model)
        let server = try ServeProcess(["-m", model, "--parallel", "2", "--ctx", "256", "--api-key", "sesame"])
        defer { _ = server.terminate(within: 20) }
        let base = "http://127.0.0.1:\(server.port)"

        // curl, streamed (-N: events as they come) and whole.
        let body = try Self.jsonText(["messages": [["role": "user", "content": prompt]], "max_tokens": Self.maxTokens,
                                      "temperature": 0, "stream": true])
        let streamed = try runProgram("/usr/bin/env", ["curl", "-sS", "-N", "--max-time", "60", "-H", "Authorization: Bearer sesame",
                                                       "-H", "Content-Type: application/json", "-d", body, base + "/v1/chat/completions"])
        XCTAssertEqual(streamed.status, 0, streamed.stderr)
        let payloads = eventPayloads(Array(streamed.stdout.utf8))
        XCTAssertEqual(payloads.last, "[DONE]")
        let deltas = try payloads.dropLast().map(jsonObject).compactMap {
            (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: String])?["content"]
        }
        XCTAssertGreaterThan(deltas.count, 5, "streamed in pieces")
        XCTAssertEqual(deltas.joined(), chat)

        let wholeBody = try Self.jsonText(["prompt": prompt, "max_tokens": Self.maxTokens, "temperature": 0])
        let whole = try runProgram("/usr/bin/env", ["curl", "-sS", "--max-time", "60", "-H", "Authorization: Bearer sesame",
                                                    "-d", wholeBody, base + "/v1/completions"])
        XCTAssertEqual(whole.status, 0, whole.stderr)
        let choice = try XCTUnwrap((try jsonObject(whole.stdout)["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["text"] as? String, plain)

        // The openai package: text and chat, whole and streamed.
        let script = TestPaths.packageRoot.appendingPathComponent("scripts/openai-client").path
        let result = try runProgram(script, ["openai_greedy.py", String(server.port), "sesame", prompt, String(Self.maxTokens)], timeout: 600)
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try jsonObject(result.stdout)
        let completion = try XCTUnwrap(json["completion"] as? [String: Any])
        XCTAssertEqual(completion["text"] as? String, plain)
        XCTAssertEqual(json["completion_stream"] as? String, plain)
        let chatWhole = try XCTUnwrap(json["chat"] as? [String: Any])
        XCTAssertEqual(chatWhole["text"] as? String, chat)
        let chatStream = try XCTUnwrap(json["chat_stream"] as? [String: Any])
        XCTAssertEqual(chatStream["text"] as? String, chat)
        XCTAssertEqual((chatStream["usage"] as? [Int])?.count, 2)
        XCTAssertEqual(chatStream["usage"] as? [Int], chatWhole["usage"] as? [Int])
    }

    // MARK: limits, disconnects, stopping

    func testPromptLongerThanTheContextIsRefusedBeforeAnyWork() throws {
        let model = try ServeProcess.smolLM2()
        let server = try ServeProcess(["-m", model, "--parallel", "1", "--ctx", "32"])
        defer { _ = server.terminate(within: 20) }
        let long = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 8)
        let started = Date()
        let response = try server.request("POST", "/v1/completions", body: try Self.jsonText(["prompt": long, "max_tokens": 4]))
        XCTAssertEqual(response.status, 400, response.text)
        XCTAssertEqual(try response.error()["code"] as? String, "context_length_exceeded")
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "answered without evaluating the prompt")
        // Nothing was admitted: no prompt tokens counted, nothing generated.
        XCTAssertEqual(try server.metric("ember:prompt_tokens_total"), 0)
        XCTAssertEqual(try server.metric("ember:generation_tokens_total"), 0)
        // A prompt that fits, asking more than the context holds, is a 400 too.
        let greedy = try server.request("POST", "/v1/completions", body: try Self.jsonText(["prompt": "Hi", "max_tokens": 40]))
        XCTAssertEqual(greedy.status, 400, greedy.text)
        XCTAssertEqual(try server.request("POST", "/v1/completions",
                                          body: try Self.jsonText(["prompt": "Hi", "max_tokens": 8])).status, 200)
    }

    func testClientThatLeavesFreesItsSlot() throws {
        let model = try ServeProcess.smolLM2()
        // One slot: the second request can only run once the first one's slot is free.
        let server = try ServeProcess(["-m", model, "--parallel", "1", "--ctx", "1024"])
        defer { _ = server.terminate(within: 20) }
        let leaving = try server.client()
        try leaving.send(RawClient.requestText("POST", "/v1/completions", body: try Self.jsonText(
            ["prompt": "Write a very long story about a dragon.", "max_tokens": 1000, "temperature": 0, "stream": true,
             "ignore_eos": true])))
        var chunks = 0
        _ = try leaving.readResponse { _ in
            chunks += 1
            return chunks < 3
        }
        XCTAssertEqual(try server.metric("ember:num_requests_running"), 1)
        close(leaving.descriptor)  // the client goes away mid-stream
        XCTAssertTrue(waitUntil(.seconds(5)) { (try? server.metric("ember:num_requests_running")) == 0 }, "the slot was freed")
        let started = Date()
        XCTAssertFalse(try Self.completion(server, "Hello", tokens: 4).isEmpty)
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertEqual(try server.metric("ember:request_success_total", labels: #"finished_reason="abort""#), 1)
    }

    func testSIGTERMFinishesRequestsUnderWayAndExitsZero() throws {
        let model = try ServeProcess.smolLM2()
        let server = try ServeProcess(["-m", model, "--parallel", "2", "--ctx", "256", "--grace", "20"])
        let client = try server.client()
        try client.send(RawClient.requestText("POST", "/v1/completions", body: try Self.jsonText(
            ["prompt": Self.prompts[0], "max_tokens": Self.maxTokens, "temperature": 0, "stream": true])))
        var body: [UInt8] = []
        var first = true
        var statusCode: Int?
        let response = try client.readResponse { chunk in
            body += chunk
            if first {
                first = false
                // The stream has begun: stop the server now.
                kill(server.process.processIdentifier, SIGTERM)
            }
            return true
        }
        statusCode = response.status
        XCTAssertEqual(statusCode, 200)
        let payloads = eventPayloads(response.body)
        XCTAssertEqual(payloads.last, "[DONE]", "the generation under way finished")
        let text = try payloads.dropLast().map(jsonObject).compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
        XCTAssertEqual(text.joined(), try Self.runText(Self.prompts[0], model: model))
        XCTAssertEqual(server.terminate(within: 20), 0, server.stderr)
        XCTAssertTrue(server.stderr.contains("stopped"), server.stderr)
        XCTAssertThrowsError(try server.client(), "no longer listening")
    }

    func testSIGTERMCancelsWhatDoesNotFinishWithinTheGrace() throws {
        let model = try ServeProcess.smolLM2()
        let server = try ServeProcess(["-m", model, "--parallel", "1", "--ctx", "2048", "--grace", "1"])
        let client = try server.client()
        try client.send(RawClient.requestText("POST", "/v1/completions", body: try Self.jsonText(
            ["prompt": "Tell me a long story.", "max_tokens": 2000, "stream": true, "ignore_eos": true])))
        _ = try client.readResponse { _ in false }
        let started = Date()
        XCTAssertEqual(server.terminate(within: 15), 0, server.stderr)
        XCTAssertLessThan(Date().timeIntervalSince(started), 1 + 5 + 2, "grace plus the cancel bound")
        XCTAssertTrue(client.isClosedByServer())
    }
}

/// The engine backend in-process: readiness before and after loading.
final class EngineBackendTests: XCTestCase {
    func testHealthIs503UntilTheModelIsLoaded() throws {
        let backend = EngineBackend(modelID: "smol", contextLength: 128)
        let http = HTTPServerConfiguration(host: "127.0.0.1", port: 0)
        let server = try OpenAIServer(backend: backend, configuration: OpenAIServerConfiguration(http: http))
        defer { server.stop(grace: .seconds(1), cancelBound: .seconds(1)) }
        let loading = try RawClient(port: server.port).request("GET", "/health")
        XCTAssertEqual(loading.status, 503)
        XCTAssertEqual(try loading.error()["code"] as? String, "model_loading")
        let early = try RawClient(port: server.port).request("POST", "/v1/completions", body: #"{"prompt": "Hi", "max_tokens": 2}"#)
        XCTAssertEqual(early.status, 503)
        var options = SessionOptions()
        options.contextLength = 128
        _ = try backend.load(path: try ServeProcess.smolLM2(), options: options, parallel: 1)
        XCTAssertEqual(try RawClient(port: server.port).request("GET", "/health").status, 200)
        let models = try RawClient(port: server.port).request("GET", "/v1/models").json()
        XCTAssertEqual((models["data"] as? [[String: Any]])?.first?["id"] as? String, "smol")
        backend.shutdown()
    }

    func testSamplingParametersMapToEmbersSettings() {
        let defaults = EngineBackend.samplerSettings(SamplingParameters())
        XCTAssertEqual(defaults, SamplerSettings(), "nil keeps the defaults of `ember run`")
        let s = EngineBackend.samplerSettings(SamplingParameters(temperature: 0, topP: 0.5, topK: 7, minP: 0.1, seed: 9,
                                                                 presencePenalty: 0.5, frequencyPenalty: -1))
        XCTAssertEqual(s.temperature, 0)
        XCTAssertEqual(s.topP, 0.5)
        XCTAssertEqual(s.topK, 7)
        XCTAssertEqual(s.minP, 0.1, accuracy: 1e-7)
        XCTAssertEqual(s.seed, 9)
        XCTAssertEqual(s.presencePenalty, 0.5)
        XCTAssertEqual(s.frequencyPenalty, -1)
    }
}
