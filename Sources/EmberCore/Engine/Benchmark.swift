import Foundation

/// Prefill and decode speed of a session, measured the way llama.cpp's benchmarks do: per
/// repetition a fresh cache, one prompt of `promptTokens` evaluated as a batch, then
/// `generatedTokens` single-token evaluations feeding back the greedy choice.
public struct BenchmarkResult: Sendable {
    /// Tokens per second of each repetition.
    public var prefill: [Double]
    public var decode: [Double]
    /// Bytes of weights read per decoded token.
    public var weightBytesPerToken: Int
    /// The machine's measured read bandwidth with the same threads, bytes per second.
    public var readBandwidth: Double
    /// The share of FFN neurons skipped while decoding (0 when dense).
    public var feedForwardSparsity: Double

    /// Decode at the median speed as a share of what the bandwidth allows.
    public var bandwidthShare: Double {
        Statistics.median(decode) * Double(weightBytesPerToken) / readBandwidth
    }
}

public enum Statistics {
    public static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

extension Session {
    public func benchmark(promptTokens: Int, generatedTokens: Int, repetitions: Int,
                          progress: (Int) -> Void = { _ in }) throws -> BenchmarkResult {
        guard promptTokens + generatedTokens <= contextLength else {
            throw ModelError.contextOverflow(needed: promptTokens + generatedTokens, context: contextLength)
        }
        // Fixed pseudo-random prompt ids: speed does not depend on the text.
        var random = SplitMix64(seed: 42)
        let prompt = (0..<max(1, promptTokens)).map { _ in Int32(random.next() % UInt64(vocabularySize)) }

        // One untimed short run faults the mapped weights in.
        reset()
        _ = try evaluate(Array(prompt.prefix(8)))

        var prefill: [Double] = []
        var decode: [Double] = []
        let sparse = pass.sparsity as? SparseExecution
        for repetition in 0..<max(1, repetitions) {
            reset()
            let start = DispatchTime.now()
            var logits = try evaluate(prompt)
            prefill.append(Double(prompt.count) / seconds(since: start))
            var decodeSeconds = 0.0
            sparse?.resetCounts()
            for _ in 0..<generatedTokens {
                let next = Self.argmax(logits)
                let step = DispatchTime.now()
                logits = try evaluate([next])
                decodeSeconds += seconds(since: step)
            }
            if generatedTokens > 0 { decode.append(Double(generatedTokens) / decodeSeconds) }
            progress(repetition + 1)
        }
        reset()
        let bandwidth = MemoryBandwidth.measureRead(threads: pool.threadCount) { body in pool.run(body) }
        return BenchmarkResult(prefill: prefill, decode: decode,
                               weightBytesPerToken: sparse?.weightBytesPerToken(model.weights) ?? model.weights.bytesPerToken,
                               readBandwidth: bandwidth,
                               feedForwardSparsity: sparse?.reachedSparsity ?? 0)
    }

    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return Int32(best)
    }
}
