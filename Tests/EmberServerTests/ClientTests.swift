@testable import EmberServer
import Foundation
import XCTest

/// Real clients against the server over loopback: curl and the `openai` Python package.
final class ClientTests: XCTestCase {
    struct Run {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs a program to its end (it gets no stdin).
    private func run(_ arguments: [String], timeout: TimeInterval = 120) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both pipes while the process runs, so neither can fill up and stall it.
        let stdout = ResultBox<Data>(), stderr = ResultBox<Data>()
        let outHandle = out.fileHandleForReading, errHandle = err.fileHandleForReading
        Thread.detachNewThread { stdout.set(outHandle.readDataToEndOfFile()) }
        Thread.detachNewThread { stderr.set(errHandle.readDataToEndOfFile()) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            process.terminate()
            XCTFail("\(arguments.joined(separator: " ")) did not end within \(timeout) s")
        }
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout.wait(), as: UTF8.self),
                   stderr: String(decoding: stderr.wait(), as: UTF8.self))
    }

    private func curl(_ server: TestServer, _ arguments: [String]) throws -> Run {
        try run(["curl", "--silent", "--show-error", "--max-time", "20"] + arguments.map {
            $0.replacingOccurrences(of: "BASE", with: "http://127.0.0.1:\(server.port)")
        })
    }

    func testCurl() throws {
        let server = try TestServer(apiKey: "k")
        defer { server.stop() }
        let auth = ["-H", "Authorization: Bearer k"]
        let body = #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}"#

        let whole = try curl(server, auth + ["-d", body, "BASE/v1/chat/completions"])
        XCTAssertEqual(whole.status, 0, whole.stderr)
        let message = (try jsonObject(whole.stdout)["choices"] as? [[String: Any]])?.first?["message"] as? [String: String]
        XCTAssertEqual(message?["content"], FakeBackend.reply(tokens: 4))

        // -N: no buffering, events as they come.
        let streamed = try curl(server, auth + ["-N", "-H", "Content-Type: application/json", "-d",
                                                #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}"#,
                                                "BASE/v1/chat/completions"])
        XCTAssertEqual(streamed.status, 0, streamed.stderr)
        let payloads = eventPayloads(Array(streamed.stdout.utf8))
        XCTAssertEqual(payloads.last, "[DONE]")
        let text = try payloads.dropLast().map(jsonObject).compactMap {
            (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: String])?["content"]
        }.joined()
        XCTAssertEqual(text, FakeBackend.reply(tokens: 4))

        // Two URLs in one run: curl reuses the kept-alive connection.
        let twice = try curl(server, ["-v", "BASE/health", "BASE/health"])
        XCTAssertEqual(twice.stdout, #"{"status":"ok"}{"status":"ok"}"#)
        XCTAssertTrue(twice.stderr.contains("Re-using existing connection") || twice.stderr.contains("Reusing existing"), twice.stderr)

        let statuses: [([String], String)] = [
            (["-d", body, "BASE/v1/chat/completions"], "401"),
            (auth + ["BASE/v1/nothing"], "404"),
            (auth + ["-X", "PUT", "BASE/v1/models"], "405"),
            (auth + ["-d", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -5}"#, "BASE/v1/chat/completions"], "400"),
            (auth + ["-d", "{not json", "BASE/v1/chat/completions"], "400"),
            (auth + ["-H", "Transfer-Encoding: chunked", "-d", body, "BASE/v1/chat/completions"], "411"),
        ]
        for (arguments, expected) in statuses {
            let result = try curl(server, ["-o", "/dev/null", "-w", "%{http_code}"] + arguments)
            XCTAssertEqual(result.stdout, expected, "\(arguments): \(result.stderr)")
        }

        // A body over the limit (5 MB > 4 MiB): 413, answered before curl sends it all.
        let big = FileManager.default.temporaryDirectory.appendingPathComponent("ember-big-\(getpid()).json")
        try Data(repeating: UInt8(ascii: "x"), count: 5_000_000).write(to: big)
        defer { try? FileManager.default.removeItem(at: big) }
        let tooLarge = try curl(server, auth + ["-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@\(big.path)", "BASE/v1/completions"])
        XCTAssertEqual(tooLarge.stdout, "413", tooLarge.stderr)
    }

    func testOpenAIPythonClient() throws {
        let server = try TestServer(backend: FakeBackend(replyLength: 7), apiKey: "k")
        defer { server.stop() }
        let script = TestPaths.packageRoot.appendingPathComponent("scripts/openai-client").path
        let result = try run([script, String(server.port), "k"], timeout: 600)
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try jsonObject(result.stdout)
        print("openai \(json["openai_version"] ?? "?") parsed Ember's responses")
        XCTAssertEqual(json["models"] as? [String], ["fake-model"])
        let promptTokens = fakePromptTokenCount([("system", "Be brief."), ("user", "Hi")])
        let chat = try XCTUnwrap(json["chat"] as? [String: Any])
        XCTAssertEqual(chat["object"] as? String, "chat.completion")
        XCTAssertEqual(chat["content"] as? String, FakeBackend.reply(tokens: 4))
        XCTAssertEqual(chat["role"] as? String, "assistant")
        XCTAssertEqual(chat["finish_reason"] as? String, "length")
        XCTAssertEqual(chat["usage"] as? [Int], [promptTokens, 4, promptTokens + 4])
        let stream = try XCTUnwrap(json["chat_stream"] as? [String: Any])
        XCTAssertEqual(stream["content"] as? String, FakeBackend.reply(tokens: 7))
        XCTAssertEqual(stream["finish_reason"] as? String, "stop")
        XCTAssertEqual(stream["usage"] as? [Int], [promptTokens, 7, promptTokens + 7])
        XCTAssertEqual(stream["ids"] as? Int, 1)
        let completion = try XCTUnwrap(json["completion"] as? [String: Any])
        XCTAssertEqual(completion["text"] as? String, FakeBackend.reply(tokens: 3))
        XCTAssertEqual(completion["usage"] as? [Int], [5, 3])
        XCTAssertEqual(json["completion_stream"] as? String, FakeBackend.reply(tokens: 3))
        let badRequest = try XCTUnwrap(json["bad_request"] as? [String: Any])
        XCTAssertEqual(badRequest["status"] as? Int, 400)
        XCTAssertEqual(badRequest["code"] as? String, "invalid_value")
        XCTAssertEqual(badRequest["param"] as? String, "max_tokens")
        XCTAssertEqual((json["wrong_key"] as? [String: Any])?["status"] as? Int, 401)
    }
}

enum TestPaths {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}
