// The metrics `/metrics` exports, and why they are named so.
//
// Routers that balance LLM servers read a few gauges from each replica's /metrics:
// - the Kubernetes Gateway API inference extension (its endpoint picker, used by llm-d) needs a
//   queue-length gauge and a KV-cache-utilization gauge (and reads a running-requests gauge);
//   its model-server protocol names vLLM's `vllm:num_requests_waiting`,
//   `vllm:num_requests_running` and `vllm:kv_cache_usage_perc` (a fraction 0–1; older vLLM
//   called it `vllm:gpu_cache_usage_perc`) and lets each be renamed with flags
//   (`--total-queued-requests-metric`, `--total-running-requests-metric`,
//   `--kv-cache-usage-percentage-metric`);
// - LiteLLM's routing strategies (least-busy, usage- and latency-based) count requests and
//   latencies on the proxy's side and read nothing from the replica's /metrics.
// llama-server exports `llamacpp:requests_processing`, `llamacpp:requests_deferred` and
// `llamacpp:kv_cache_usage_ratio`; no router we know of reads those by default.
//
// So Ember uses vLLM's metric names after its own prefix: `ember:num_requests_waiting`,
// `ember:num_requests_running`, `ember:kv_cache_usage_perc`, `ember:time_to_first_token_seconds`,
// ... each with a `model_name` label, as vLLM does. An endpoint picker is pointed at them with the
// flags above; a replica started with metrics prefix `vllm` is read by one left at its defaults.

/// The server's metrics and where each value comes from.
final class ServerMetrics: Sendable {
    let registry: MetricRegistry
    let promptTokens: Counter
    let generationTokens: Counter
    /// Finished generations by `finished_reason`: stop, length, or abort (client left, error).
    let requestsFinished: Counter
    let timeToFirstToken: Histogram
    let interTokenLatency: Histogram
    let requestLatency: Histogram
    /// Responses by HTTP status code, all endpoints.
    let httpResponses: Counter

    /// Bucket bounds in seconds, spanning CPU speeds: prompts of a few tokens to thousands on
    /// small and 7B-class models, decode from hundreds of tokens/s down to a few.
    static let timeToFirstTokenBounds = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80]
    static let interTokenBounds = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5]
    static let requestLatencyBounds = [0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600]

    /// `prefix`: `ember`, or `vllm` for routers left at vLLM's names.
    init(prefix: String, modelName: String, backend: any CompletionBackend) {
        let registry = MetricRegistry(constantLabels: [("model_name", modelName)])
        self.registry = registry
        let p = prefix + ":"
        registry.gauge(p + "num_requests_running", help: "Requests being generated now.") {
            Double(backend.load.running)
        }
        registry.gauge(p + "num_requests_waiting", help: "Requests waiting for a generation slot.") {
            Double(backend.load.waiting)
        }
        registry.gauge(p + "kv_cache_usage_perc", help: "Fraction of the KV cache in use (1 means 100 percent).") {
            backend.load.kvCacheUsage
        }
        promptTokens = registry.counter(p + "prompt_tokens_total", help: "Prompt tokens of admitted requests.")
        generationTokens = registry.counter(p + "generation_tokens_total", help: "Tokens generated.")
        requestsFinished = registry.counter(p + "request_success_total", help: "Generations ended, by reason.",
                                            labelNames: ["finished_reason"])
        timeToFirstToken = registry.histogram(p + "time_to_first_token_seconds",
                                              help: "From a request's arrival to its first generated token.",
                                              bounds: Self.timeToFirstTokenBounds)
        interTokenLatency = registry.histogram(p + "inter_token_latency_seconds",
                                               help: "Between consecutive generated tokens of a request.",
                                               bounds: Self.interTokenBounds)
        requestLatency = registry.histogram(p + "e2e_request_latency_seconds",
                                            help: "From a generation request's arrival to its last token.",
                                            bounds: Self.requestLatencyBounds)
        httpResponses = registry.counter(p + "http_responses_total", help: "HTTP responses sent, by status code.",
                                         labelNames: ["code"])
    }
}
