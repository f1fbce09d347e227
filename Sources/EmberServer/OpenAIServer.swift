/// What `ember serve` configures besides the engine.
public struct OpenAIServerConfiguration: Sendable {
    public var http: HTTPServerConfiguration
    /// When set, every endpoint but `/`, `/health` and `/metrics` wants `Authorization: Bearer KEY`.
    public var apiKey: String?
    /// Prefix of the exported metric names: `ember`, or `vllm` for routers that expect vLLM's.
    public var metricsPrefix: String

    public init(http: HTTPServerConfiguration = HTTPServerConfiguration(), apiKey: String? = nil, metricsPrefix: String = "ember") {
        self.http = http
        self.apiKey = apiKey
        self.metricsPrefix = metricsPrefix
    }
}

public enum OpenAIServerError: Error, CustomStringConvertible {
    case invalidMetricsPrefix(String)
    case emptyAPIKey

    public var description: String {
        switch self {
        case .invalidMetricsPrefix(let prefix): "metrics prefix \(prefix) is not a Prometheus name (letters, digits, _)"
        case .emptyAPIKey: "the API key is empty"
        }
    }
}

/// The OpenAI-compatible server over a backend: listening from `init` until `stop`.
public final class OpenAIServer: Sendable {
    private let http: HTTPServer

    public init(backend: any CompletionBackend, configuration: OpenAIServerConfiguration = OpenAIServerConfiguration()) throws {
        guard MetricName.isValidLabel(configuration.metricsPrefix) else {
            throw OpenAIServerError.invalidMetricsPrefix(configuration.metricsPrefix)
        }
        if configuration.apiKey?.isEmpty == true { throw OpenAIServerError.emptyAPIKey }
        let handler = OpenAIHandler(backend: backend, apiKey: configuration.apiKey, metricsPrefix: configuration.metricsPrefix)
        http = try HTTPServer(configuration: configuration.http, handler: handler)
    }

    /// The port listened on (the chosen one when the configuration said 0).
    public var port: Int { http.port }

    /// Connections open now.
    public var openConnections: Int { http.openConnections }

    /// Stops accepting, answers /health with 503, lets generations under way finish for up to
    /// `grace`, then cancels the rest. True when every connection had ended within the bounds.
    @discardableResult
    public func stop(grace: Duration = .seconds(10), cancelBound: Duration = .seconds(5)) -> Bool {
        http.stop(grace: grace, cancelBound: cancelBound)
    }
}
