@testable import EmberServer
import Foundation
import XCTest

/// The chat page at `/` in a real browser: Debian's headless Chromium driven by selenium
/// (scripts/browser-client). The browser and driver are required, not optional: when they are
/// missing the test fails and says how to install them (`scripts/setup --browser`, which CI runs).
final class ChatPageTests: XCTestCase {
    func testChatPageStreamsRepliesInHeadlessChromium() throws {
        // 12 tokens 100 ms apart: a page that streams shows the reply grow over about a second;
        // one that waits for the whole body shows it at once.
        let backend = FakeBackend(replyLength: 12, tokenDelay: .milliseconds(100))
        let server = try TestServer(backend: backend, apiKey: "sesame")
        defer { server.stop() }
        let script = TestPaths.packageRoot.appendingPathComponent("scripts/browser-client").path
        let result = try runProgram(script, [String(server.port), "sesame"], timeout: 600)
        guard result.status == 0 else { return XCTFail("scripts/browser-client failed: \(result.stderr)") }
        let page = try jsonObject(result.stdout)
        print("chat page driven in Chromium \(page["browser"] ?? "?")")
        XCTAssertEqual(page["title"] as? String, "Ember")

        // Without the key: the server's 401 message in an error bubble, and no generation.
        let withoutKey = try XCTUnwrap(page["without_key"] as? [String: Any])
        let refused = try XCTUnwrap(withoutKey["reply"] as? [String: String])
        XCTAssertEqual(refused["class"], "turn error")
        XCTAssertTrue(refused["text"]?.hasPrefix("Error: ") == true && refused["text"]?.contains("API key") == true,
                      refused["text"] ?? "")

        // With the key typed into its field (kept across the reload): the model's name, then replies.
        XCTAssertEqual(page["key_field"] as? Bool, true)
        XCTAssertEqual(page["model"] as? String, "fake-model")
        let reply = FakeBackend.reply(tokens: 12)
        for name in ["first", "second"] {
            let exchange = try XCTUnwrap(page[name] as? [String: Any], name)
            XCTAssertEqual((exchange["user"] as? [String: String])?["class"], "turn user", name)
            XCTAssertEqual((exchange["reply"] as? [String: String])?["class"], "turn assistant", name)
            XCTAssertEqual((exchange["reply"] as? [String: String])?["text"], reply, name)
            XCTAssertEqual(exchange["prompt_after"] as? String, "", "\(name): the message box is cleared")

            // Streamed: the bubble showed growing prefixes of the reply before the whole of it.
            // Twelve tokens arrive 100 ms apart; ask for at least three partial texts (not all
            // twelve, so a slow browser that coalesces events still passes) spread over 300 ms.
            let seen = try XCTUnwrap(exchange["seen"] as? [String], name)
            let times = try XCTUnwrap(exchange["seen_ms"] as? [Double], name)
            XCTAssertEqual(seen.last, reply, name)
            XCTAssertTrue(seen.allSatisfy { reply.hasPrefix($0) }, "\(name): \(seen)")
            let partial = seen.filter { !$0.isEmpty && $0 != reply }
            XCTAssertGreaterThanOrEqual(partial.count, 3, "\(name): the reply did not stream: \(seen)")
            XCTAssertGreaterThanOrEqual((times.last ?? 0) - (times.first ?? 0), 300, "\(name): \(times)")
        }
        XCTAssertEqual(page["turns"] as? [String], ["turn user", "turn assistant", "turn user", "turn assistant"])

        // The refused request never reached the engine; the second carried the first exchange.
        let requests = backend.requests
        XCTAssertEqual(requests.count, 2)
        if requests.count == 2 {
            XCTAssertEqual(try backend.detokenize(requests[0].promptTokens), "user: Hello\nassistant:")
            XCTAssertEqual(try backend.detokenize(requests[1].promptTokens),
                           "user: Hello\nassistant: \(reply)\nuser: And again\nassistant:")
        }
    }
}
