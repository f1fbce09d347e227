import EmberCore
import EmberDownload
import EmberServer
import Foundation

/// `ember serve`: the OpenAI-compatible server. It listens at once (answering /health with 503
/// while the model loads), serves until SIGTERM or SIGINT, then stops accepting, lets
/// generations under way finish for a grace period, cancels the rest and exits 0.
enum ServeCommand {
    static let flags: [Arguments.Flag] = SessionFlags.sparsity + [
        CommonFlags.model, CommonFlags.threads,
        .init(names: ["--ctx", "-c"], takesValue: true, help: "positions each sequence may hold: prompt and reply (default 2048, at most the model's)"),
        CommonFlags.batch,
        .init(names: ["--host"], takesValue: true, help: "address to listen on (default 127.0.0.1; 0.0.0.0 serves every interface)"),
        .init(names: ["--port"], takesValue: true, help: "TCP port (default 8080; 0 picks a free one, printed on stderr)"),
        .init(names: ["--parallel", "-np"], takesValue: true, help: "sequences generated at once, each with its own KV cache (default 4)"),
        .init(names: ["--api-key"], takesValue: true, help: "require `Authorization: Bearer KEY` (default: $EMBER_API_KEY, else none)"),
        .init(names: ["--alias"], takesValue: true, help: "the model name clients see (default: the file name without .gguf)"),
        .init(names: ["--metrics-prefix"], takesValue: true, help: "prefix of /metrics names: ember (default), or vllm for routers expecting vLLM's"),
        .init(names: ["--max-connections"], takesValue: true, help: "connections served at once (default 64)"),
        .init(names: ["--grace"], takesValue: true, help: "seconds generations under way may take to finish after SIGTERM before they are cancelled (default 10)"),
    ]

    static let summary = "serve the model over an OpenAI-compatible HTTP API with continuous batching"

    static func main(_ arguments: Arguments) async throws {
        let options = try SessionFlags.options(arguments)
        let parallel = try arguments.int("--parallel", default: 4, range: 1...256)
        let port = try arguments.int("--port", default: 8080, range: 0...65535)
        let grace = try arguments.int("--grace", default: 10, range: 0...3600)
        var http = HTTPServerConfiguration(host: arguments.string("--host") ?? "127.0.0.1", port: port)
        http.maxConnections = try arguments.int("--max-connections", default: 64, range: 1...4096)
        let apiKey = arguments.string("--api-key") ?? ProcessInfo.processInfo.environment["EMBER_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        if arguments.has("--api-key"), apiKey?.isEmpty != false { throw UsageError("--api-key is empty") }
        let modelPath = arguments.string("--model")
        if let modelPath, !FileManager.default.fileExists(atPath: modelPath) { throw UsageError("no model file at \(modelPath)") }
        let fileName = modelPath.map { URL(fileURLWithPath: $0).lastPathComponent } ?? KnownModel.defaultModel.fileName
        let modelID = arguments.string("--alias") ?? (fileName.hasSuffix(".gguf") ? String(fileName.dropLast(5)) : fileName)

        let stop = try StopSignal()
        let backend = EngineBackend(modelID: modelID, contextLength: options.contextLength ?? 2048)
        let server: OpenAIServer
        do {
            server = try OpenAIServer(backend: backend, configuration: OpenAIServerConfiguration(
                http: http, apiKey: apiKey, metricsPrefix: arguments.string("--metrics-prefix") ?? "ember"))
        } catch let error as OpenAIServerError {
            throw UsageError("\(error)")
        }
        Terminal.note("ember serve: listening on http://\(http.host):\(server.port) (model \(modelID) loading)")

        // The model loads beside the listener, so /health answers (503) meanwhile.
        let failure = LoadFailure()
        let loader = Thread {
            do {
                let path = try modelPath ?? ModelStore.ensure(KnownModel.defaultModel) { Terminal.note("ember: \($0)") }
                let notes = try backend.load(path: path, options: options, parallel: parallel)
                for note in notes { Terminal.note("ember: " + note) }
                Terminal.note("ember serve: ready: \(parallel) slot\(parallel == 1 ? "" : "s") of \(backend.contextLength) positions")
            } catch {
                failure.error = error
                stop.trigger()
            }
        }
        loader.start()

        let signal = await stop.wait()
        if signal != 0 { Terminal.note("ember serve: signal \(signal): stopping (up to \(grace) s for generations under way)") }
        let clean = server.stop(grace: .seconds(grace), cancelBound: .seconds(5))
        backend.shutdown()
        if let error = failure.error {
            if case SparseExecutionError.hybridNeedsPredictor = error {
                throw UsageError("--vram-budget needs --sparsity predictor (or predictors beside the model)")
            }
            throw error
        }
        if !clean { Terminal.note("ember serve: some connections were still open after the cancel bound") }
        Terminal.note("ember serve: stopped")
    }

    /// The loading thread's error, read after the stop signal it triggers.
    private final class LoadFailure: @unchecked Sendable {
        // Written once by the loader before `trigger`, read after `wait` returns: the pipe
        // orders the two.
        var error: (any Error)?
    }
}
