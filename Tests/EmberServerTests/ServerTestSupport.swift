@testable import EmberServer
import Foundation
import XCTest

/// A server on a free loopback port over a fake backend, with timeouts short enough for tests.
struct TestServer {
    let server: OpenAIServer
    let backend: FakeBackend
    var port: Int { server.port }

    init(backend: FakeBackend = FakeBackend(), apiKey: String? = nil, limits: HTTPLimits = HTTPLimits(),
         maxConnections: Int = 16, headerTimeout: Duration = .seconds(5), idleTimeout: Duration = .seconds(5),
         writeTimeout: Duration = .seconds(5), metricsPrefix: String = "ember") throws {
        self.backend = backend
        let http = HTTPServerConfiguration(host: "127.0.0.1", port: 0, limits: limits, maxConnections: maxConnections,
                                           headerTimeout: headerTimeout, bodyTimeout: headerTimeout, idleTimeout: idleTimeout,
                                           writeTimeout: writeTimeout)
        server = try OpenAIServer(backend: backend, configuration: OpenAIServerConfiguration(http: http, apiKey: apiKey,
                                                                                            metricsPrefix: metricsPrefix))
    }

    func client() throws -> RawClient { try RawClient(port: port) }

    /// One request on a fresh connection.
    func request(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) throws -> RawClient.Response {
        try client().request(method, path, body: body, headers: headers)
    }

    func stop() { server.stop(grace: .seconds(2), cancelBound: .seconds(2)) }
}

/// Waits until `condition` holds, up to `timeout`.
func waitUntil(_ timeout: Duration = .seconds(3), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// The prompt tokens the fake backend makes of a conversation.
func fakePromptTokenCount(_ turns: [(String, String)]) -> Int {
    let text = turns.map { "\($0.0): \($0.1)\n" }.joined() + "assistant:"
    return text.unicodeScalars.count + 1  // and BOS
}
