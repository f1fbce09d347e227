import EmberCore
import Foundation

/// `ember bench`: prefill and decode speed, and how close decode comes to the memory bandwidth.
enum BenchCommand {
    static let flags: [Arguments.Flag] = SessionFlags.sparsity + CommonFlags.all.filter { $0.names[0] != "--ctx" } + [
        .init(names: ["--prompt-tokens", "-p"], takesValue: true, help: "prompt length (default 64)"),
        .init(names: ["--n-gen", "-n"], takesValue: true, help: "tokens decoded after the prompt (default 128)"),
        .init(names: ["--repetitions", "-r"], takesValue: true, help: "repetitions (default 3)"),
        .init(names: ["--json"], takesValue: false, help: "print one JSON object instead of a table"),
        .init(names: ["--sequences"], takesValue: true,
              help: "decode N sequences together, one token each per step, for each N of a list (e.g. 1,2,4,8): "
                  + "sparse batched (always, and by the measured rule) against dense batched, and the union's growth"),
        .init(names: ["--steps"], takesValue: true, help: "with --sequences: decoding steps per repetition (default 4)"),
        .init(names: ["--batch-ffn"], takesValue: true,
              help: "time one layer's batched sparse FFN against the dense products at union shares 5-100 %, for each "
                  + "row count of a list (e.g. 2,4,8,16,32): where sparse stops paying"),
        .init(names: ["--row-share"], takesValue: true, help: "with --batch-ffn: each row's own active share (default 0.1)"),
        .init(names: ["--kernels"], takesValue: true,
              help: "portable|avx2|avx512-vnni: run the CPU kernels of that SIMD family, to compare them "
                  + "(default: the best this CPU runs; all give the same results)"),
    ]

    static let summary = "measure prefill and decode tokens/s against the machine's read bandwidth"

    static func main(_ arguments: Arguments) async throws {
        let kernels = try kernelFamily(arguments)
        if arguments.has("--sequences") || arguments.has("--batch-ffn") { return try await batched(arguments) }
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
                "model": model.path, "threads": session.options.threads, "kernels": kernels.name,
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
                           + "kernels: \(kernels), repetitions: \(repetitions), sparsity: \(mode)"
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

    /// `--kernels`: caps the SIMD family for the whole run; the family in use without it.
    static func kernelFamily(_ arguments: Arguments) throws -> KernelFamily {
        guard let text = arguments.string("--kernels") else { return KernelFamily.current }
        guard let family = KernelFamily(name: text) else {
            let names = KernelFamily.allCases.map(\.name).joined(separator: ", ")
            throw UsageError("--kernels must be one of \(names), not \"\(text)\"")
        }
        guard family.rawValue <= KernelFamily.best.rawValue else {
            throw UsageError("--kernels \(text): this CPU does not run the \(family) kernels (its best: \(KernelFamily.best.name))")
        }
        KernelFamily.limit(to: family)
        return family
    }

    /// A list of row counts ("1,2,4").
    static func rowCounts(_ text: String, flag: String) throws -> [Int] {
        let counts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ $0.map { (1...1024).contains($0) } ?? false }) else {
            throw UsageError("\(flag) takes a list of row counts in 1...1024, like 1,2,4,8")
        }
        return counts.map { $0! }
    }

    /// `--sequences` and `--batch-ffn`: batched sparsity, printed as tables with the load average
    /// beside them (the cores may be shared).
    static func batched(_ arguments: Arguments) async throws {
        let model = try SessionFlags.model(arguments)
        let load = { (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?" }
        if let list = arguments.string("--batch-ffn") {
            let rows = try rowCounts(list, flag: "--batch-ffn")
            guard rows.allSatisfy({ $0 >= 2 }) else { throw UsageError("--batch-ffn: row counts of at least 2 (one row is not a batch)") }
            let share = Double(arguments.string("--row-share") ?? "0.1") ?? -1
            guard share > 0, share <= 1 else { throw UsageError("--row-share must be in (0, 1]") }
            let repetitions = try arguments.int("--repetitions", default: 5, range: 1...1000)
            var options = try SessionFlags.options(arguments, context: 16)
            options.batchSize = max(options.batchSize, rows.max()!)
            options.sparsity = .dense
            let session = try Session(model: model, options: options)
            try Terminal.print("load average before: \(load())")
            let fractions = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
            let report = try await session.batchCrossovers(rowCounts: rows, fractions: fractions, rowShare: share, repetitions: repetitions)
            try Terminal.print("one layer's FFN of \((model.path as NSString).lastPathComponent), rows' own share \(share), median of "
                               + "\(repetitions) alternating runs over rotating layers, threads \(session.options.threads)")
            try Terminal.print("rows  union %   sparse µs   dense µs   dense/sparse")
            for p in report.points {
                try Terminal.print(String(format: "%4d  %7.1f  %10.0f  %9.0f  %9.2fx", p.rows, p.unionFraction * 100, p.sparseMicroseconds,
                                          p.denseMicroseconds, p.denseMicroseconds / p.sparseMicroseconds))
            }
            try Terminal.print("crossovers (largest union share where sparse is faster): "
                               + report.crossovers.map { String(format: "%d rows %.2f", $0.rows, $0.fraction) }.joined(separator: ", "))
            try Terminal.print("load average after: \(load())")
        }
        if let list = arguments.string("--sequences") {
            let rows = try rowCounts(list, flag: "--sequences")
            let promptTokens = try arguments.int("--prompt-tokens", default: 16, range: 1...1 << 16)
            let steps = try arguments.int("--steps", default: 4, range: 1...1 << 16)
            let repetitions = try arguments.int("--repetitions", default: 2, range: 1...1000)
            var options = try SessionFlags.options(arguments, context: promptTokens + steps)
            options.batchSize = max(options.batchSize, rows.max()!)
            let session = try Session(model: model, options: options)
            for note in session.notes { Terminal.note("ember: " + note) }
            try Terminal.print("load average before: \(load())")
            let progress = Progress("batched decode")
            let report = try await session.batchedDecodeBenchmark(rowCounts: rows, promptTokens: promptTokens, steps: steps,
                                                                  repetitions: repetitions) { progress.update($0, of: $1) }
            progress.finish()
            try Terminal.print("\((model.path as NSString).lastPathComponent), sparsity \(report.mode), threads \(session.options.threads): "
                               + "N sequences with \(promptTokens)-token prompts decode \(steps) steps together; generated tokens/s "
                               + "(median of \(repetitions), the variants taking turns; one row is the single-token decoder)")
            try Terminal.print("rows  row active %  union %   sparse tok/s   rule tok/s (dense share)   dense tok/s   sparse/dense")
            for r in report.rows {
                let sparse = Statistics.median(r.sparse), rule = Statistics.median(r.rule), dense = Statistics.median(r.dense)
                try Terminal.print(String(format: "%4d  %12.1f  %7.1f  %13.2f  %11.2f (%4.0f %%)       %11.2f  %11.2fx", r.rows,
                                          r.rowActiveFraction * 100, r.unionFraction * 100, sparse, rule, r.ruleDenseShare * 100,
                                          dense, sparse / dense))
            }
            try Terminal.print("load average after: \(load())")
        }
    }
}
