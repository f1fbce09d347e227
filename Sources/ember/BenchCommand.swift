import EmberCore
import Foundation

/// `ember bench`: prefill and decode speed, and how close decode comes to the memory bandwidth.
enum BenchCommand {
    static let flags: [Arguments.Flag] = SessionFlags.sparsity + CommonFlags.all.filter { $0.names[0] != "--ctx" } + [
        .init(names: ["--prompt-tokens", "-p"], takesValue: true, help: "prompt length (default 64)"),
        .init(names: ["--n-gen", "-n"], takesValue: true, help: "tokens decoded after the prompt (default 128)"),
        .init(names: ["--repetitions", "-r"], takesValue: true, help: "repetitions (default 3)"),
        .init(names: ["--json"], takesValue: false, help: "print one JSON object instead of a table"),
    ]

    static let summary = "measure prefill and decode tokens/s against the machine's read bandwidth"

    static func main(_ arguments: Arguments) async throws {
        let promptTokens = try arguments.int("--prompt-tokens", default: 64, range: 1...1 << 16)
        let generated = try arguments.int("--n-gen", default: 128, range: 0...1 << 16)
        let repetitions = try arguments.int("--repetitions", default: 3, range: 1...1000)
        let model = try SessionFlags.model(arguments)
        guard promptTokens + generated <= model.contextLength else {
            throw UsageError("-p \(promptTokens) + -n \(generated) exceeds the model's context of \(model.contextLength)")
        }
        // The context the run needs and no more (a device holding KV caches has them sized by it).
        let session = try SessionFlags.session(arguments, model: model, context: promptTokens + generated)
        let progress = Progress("bench")
        let result = try await session.benchmark(promptTokens: promptTokens, generatedTokens: generated,
                                                 repetitions: repetitions) { progress.update($0, of: repetitions) }
        progress.finish()

        let prefill = Statistics.median(result.prefill)
        let decode = Statistics.median(result.decode)
        // Hybrid runs: the counts cover the last repetition's decoded tokens.
        let perToken = 1000 / Double(max(generated, 1))
        if arguments.has("--json") {
            var object: [String: Any] = [
                "model": model.path, "threads": session.options.threads,
                "prompt_tokens": promptTokens, "generated_tokens": generated, "repetitions": repetitions,
                "prefill_tps": result.prefill, "decode_tps": result.decode,
                "prefill_tps_median": prefill, "decode_tps_median": decode,
                "weight_bytes_per_token": result.weightBytesPerToken,
                "read_bandwidth_bytes_per_s": result.readBandwidth,
                "bandwidth_share": result.bandwidthShare,
                "sparsity_mode": result.sparsityMode.description,
                "ffn_sparsity": result.feedForwardSparsity,
                "peak_resident_bytes": result.peakResidentBytes,
                "kv_cache_type": result.kvCacheType.rawValue, "kv_cache_bytes": result.kvCacheBytes,
            ]
            if let hybrid = result.hybrid {
                object["device"] = hybrid.deviceName
                object["device_share"] = hybrid.counts.deviceShare
                object["device_attention_layers"] = hybrid.attentionLayers
                object["device_output_head"] = hybrid.outputHead
                object["cpu_ms_per_token"] = hybrid.counts.cpuSeconds * perToken
                object["device_wait_ms_per_token"] = hybrid.counts.deviceWaitSeconds * perToken
                if let failure = hybrid.counts.failure { object["device_failure"] = failure }
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            try Terminal.print(String(decoding: data, as: UTF8.self))
            return
        }
        func spread(_ values: [Double]) -> String {
            guard let low = values.min(), let high = values.max() else { return "-" }
            return String(format: "%.1f – %.1f", low, high)
        }
        let mode = result.sparsityMode
        try Terminal.print("model: \((model.path as NSString).lastPathComponent), threads: \(session.options.threads), "
                           + "repetitions: \(repetitions), sparsity: \(mode)"
                           + (mode == .dense ? "" : String(format: " (%.1f %% of FFN neurons skipped while decoding)",
                                                           result.feedForwardSparsity * 100)))
        try Terminal.print("test              tokens/s (median)   spread (min – max)")
        try Terminal.print(String(format: "prefill %-8d  %17.1f   %@", promptTokens, prefill, spread(result.prefill)))
        if generated > 0 {
            try Terminal.print(String(format: "decode %-9d  %17.1f   %@", generated, decode, spread(result.decode)))
        }
        try Terminal.print(String(format: "weights read per decoded token: %.1f MB; measured read bandwidth: %.1f GB/s; "
                                    + "median decode uses %.0f %% of it; peak resident memory %@ (KV cache %@: %@)", Double(result.weightBytesPerToken) / 1e6,
                                  result.readBandwidth / 1e9, result.bandwidthShare * 100, ByteSize.format(result.peakResidentBytes),
                                  result.kvCacheType.rawValue, ByteSize.format(result.kvCacheBytes)))
        if let hybrid = result.hybrid, generated > 0 {
            let c = hybrid.counts
            try Terminal.print(String(format: "hybrid: %@ ran the attention of %d layers%@ and computed %.1f %% of the activated neurons "
                                        + "(%.0f per token, the CPU %.0f); per token the CPU worked %.2f ms on its neurons, then "
                                        + "waited %.2f ms for the device", hybrid.deviceName, hybrid.attentionLayers,
                                      hybrid.outputHead ? " and the output head" : "", c.deviceShare * 100,
                                      Double(c.deviceNeurons) / Double(generated), Double(c.cpuNeurons) / Double(generated),
                                      c.cpuSeconds * perToken, c.deviceWaitSeconds * perToken))
            if let failure = c.failure { try Terminal.print("hybrid: the device failed and the CPU took over: \(failure)") }
        }
    }
}
