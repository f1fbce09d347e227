import EmberCore
import Foundation

/// `ember bench`: prefill and decode speed, and how close decode comes to the memory bandwidth.
enum BenchCommand {
    static let flags: [Arguments.Flag] = SparsityFlags.all + CommonFlags.all.filter { $0.names[0] != "--ctx" } + [
        .init(names: ["--prompt-tokens", "-p"], takesValue: true, help: "prompt length (default 64)"),
        .init(names: ["--n-gen", "-n"], takesValue: true, help: "tokens decoded after the prompt (default 128)"),
        .init(names: ["--repetitions", "-r"], takesValue: true, help: "repetitions (default 3)"),
        .init(names: ["--json"], takesValue: false, help: "print one JSON object instead of a table"),
    ]

    static let summary = "measure prefill and decode tokens/s against the machine's read bandwidth"

    static func main(_ arguments: Arguments) throws {
        let promptTokens = try arguments.int("--prompt-tokens", default: 64, range: 1...1 << 16)
        let generated = try arguments.int("--n-gen", default: 128, range: 0...1 << 16)
        let repetitions = try arguments.int("--repetitions", default: 3, range: 1...1000)
        let loaded = try LoadedModel(arguments)
        // The context the run needs and no more (a device holding KV caches has them sized by it).
        let session = try loaded.session(arguments, minimumContext: promptTokens + generated, exactContext: true)
        let progress = Progress("bench")
        let result = try session.benchmark(promptTokens: promptTokens, generatedTokens: generated,
                                           repetitions: repetitions) { progress.update($0, of: repetitions) }
        progress.finish()

        let prefill = Statistics.median(result.prefill)
        let decode = Statistics.median(result.decode)
        // Hybrid runs: the counts cover the last repetition's decoded tokens.
        let sparse = session.pass.sparsity as? SparseExecution
        let device = sparse?.hybridDevice
        let perToken = 1000 / Double(max(generated, 1))
        if arguments.has("--json") {
            var object: [String: Any] = [
                "model": loaded.path, "threads": session.pool.threadCount,
                "prompt_tokens": promptTokens, "generated_tokens": generated, "repetitions": repetitions,
                "prefill_tps": result.prefill, "decode_tps": result.decode,
                "prefill_tps_median": prefill, "decode_tps_median": decode,
                "weight_bytes_per_token": result.weightBytesPerToken,
                "read_bandwidth_bytes_per_s": result.readBandwidth,
                "bandwidth_share": result.bandwidthShare,
                "sparsity_mode": (session.pass.sparsity as? SparseExecution)?.mode.description ?? "dense",
                "ffn_sparsity": result.feedForwardSparsity,
            ]
            if let device, let hybrid = sparse?.hybrid {
                object["device"] = device.info.name
                object["device_share"] = hybrid.deviceShare
                object["device_attention_layers"] = sparse?.hybridPlacement?.attentionLayers.count ?? 0
                object["device_output_head"] = sparse?.hybridPlacement?.outputHead ?? false
                object["cpu_ms_per_token"] = hybrid.cpuSeconds * perToken
                object["device_wait_ms_per_token"] = hybrid.deviceWaitSeconds * perToken
                if let failure = hybrid.failure { object["device_failure"] = failure }
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        func spread(_ values: [Double]) -> String {
            guard let low = values.min(), let high = values.max() else { return "-" }
            return String(format: "%.1f – %.1f", low, high)
        }
        let mode = (session.pass.sparsity as? SparseExecution)?.mode.description ?? "dense"
        print("model: \((loaded.path as NSString).lastPathComponent), threads: \(session.pool.threadCount), repetitions: \(repetitions), sparsity: \(mode)"
              + (mode == "dense" ? "" : String(format: " (%.1f %% of FFN neurons skipped while decoding)", result.feedForwardSparsity * 100)))
        print("test              tokens/s (median)   spread (min – max)")
        print(String(format: "prefill %-8d  %17.1f   %@", promptTokens, prefill, spread(result.prefill)))
        if generated > 0 {
            print(String(format: "decode %-9d  %17.1f   %@", generated, decode, spread(result.decode)))
        }
        print(String(format: "weights read per decoded token: %.1f MB; measured read bandwidth: %.1f GB/s; median decode uses %.0f %% of it",
                     Double(result.weightBytesPerToken) / 1e6, result.readBandwidth / 1e9, result.bandwidthShare * 100))
        if let device, let hybrid = sparse?.hybrid, generated > 0 {
            print(String(format: "hybrid: %@ ran the attention of %d layers%@ and computed %.1f %% of the activated neurons "
                            + "(%.0f per token, the CPU %.0f); per token the CPU worked %.2f ms on its neurons, then waited %.2f ms "
                            + "for the device", device.info.name, sparse?.hybridPlacement?.attentionLayers.count ?? 0,
                         sparse?.hybridPlacement?.outputHead == true ? " and the output head" : "",
                         hybrid.deviceShare * 100, Double(hybrid.deviceNeurons) / Double(generated),
                         Double(hybrid.cpuNeurons) / Double(generated), hybrid.cpuSeconds * perToken,
                         hybrid.deviceWaitSeconds * perToken))
            if let failure = hybrid.failure { print("hybrid: the device failed and the CPU took over: \(failure)") }
        }
    }
}
