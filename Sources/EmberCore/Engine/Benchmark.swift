import Foundation

/// Prefill and decode speed, measured the way llama.cpp's benchmarks do: per repetition a
/// fresh cache, one prompt of `promptTokens` evaluated as a batch, then `generatedTokens`
/// single-token evaluations feeding back the greedy choice.
public struct BenchmarkResult: Sendable {
    /// Tokens per second of each repetition.
    public var prefill: [Double]
    public var decode: [Double]
    /// Bytes of weights read per decoded token.
    public var weightBytesPerToken: Int
    /// The machine's measured read bandwidth with the same threads, bytes per second.
    public var readBandwidth: Double
    /// The sparsity mode of the run, and the share of FFN neurons it skipped while decoding.
    public var sparsityMode: SparsityMode
    public var feedForwardSparsity: Double
    /// Hybrid runs: what the device did over the last repetition's decoded tokens.
    public var hybrid: HybridReport?
    /// The most resident memory the process held by the end of the timed runs, in bytes.
    public var peakResidentBytes: Int
    /// The KV cache: how it stores keys and values, and the bytes it takes.
    public var kvCacheType: KVCacheType
    public var kvCacheBytes: Int

    /// Decode at the median speed as a share of what the bandwidth allows.
    public var bandwidthShare: Double {
        Statistics.median(decode) * Double(weightBytesPerToken) / readBandwidth
    }
}

/// What the device of a hybrid run held and did.
public struct HybridReport: Sendable {
    public var deviceName: String
    public var attentionLayers: Int
    public var outputHead: Bool
    /// Over the decoded tokens counted: active neurons each side computed, the CPU's time on
    /// its neurons and its wait for the device, and why the device was dropped, if it was.
    public var counts: HybridCounts
}

public enum Statistics {
    public static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

extension Context {
    func benchmark(promptTokens: Int, generatedTokens: Int, repetitions: Int,
                   progress: (Int) -> Void = { _ in }) throws -> BenchmarkResult {
        guard promptTokens + generatedTokens <= contextLength else {
            throw ModelError.contextOverflow(needed: promptTokens + generatedTokens, context: contextLength)
        }
        // Fixed pseudo-random prompt ids: speed does not depend on the text.
        var random = SplitMix64(seed: 42)
        let prompt = (0..<max(1, promptTokens)).map { _ in Int32(random.next() % UInt64(vocabularySize)) }

        // One untimed short run faults the mapped weights in.
        reset()
        try advance(Array(prompt.prefix(8)))

        var prefill: [Double] = []
        var decode: [Double] = []
        for repetition in 0..<max(1, repetitions) {
            reset()
            let start = DispatchTime.now()
            try advance(prompt)
            prefill.append(Double(prompt.count) / seconds(since: start))
            var decodeSeconds = 0.0
            sparse?.resetCounts()
            for _ in 0..<generatedTokens {
                let next = withLogits { argmax($0) }
                let step = DispatchTime.now()
                try advance([next])
                decodeSeconds += seconds(since: step)
            }
            if generatedTokens > 0 { decode.append(Double(generatedTokens) / decodeSeconds) }
            progress(repetition + 1)
        }
        reset()
        // Before the bandwidth measurement, whose buffer would count otherwise.
        let peak = ResidentMemory.peakBytes()
        let bandwidth = MemoryBandwidth.measureRead(threads: pool.threadCount) { body in pool.run(body) }
        return BenchmarkResult(prefill: prefill, decode: decode,
                               weightBytesPerToken: sparse?.weightBytesPerToken(model) ?? model.bytesPerToken,
                               readBandwidth: bandwidth, sparsityMode: sparse?.mode ?? .dense,
                               feedForwardSparsity: sparse?.reachedSparsity ?? 0, hybrid: hybridReport,
                               peakResidentBytes: peak, kvCacheType: cache.type, kvCacheBytes: cache.byteCount)
    }

    /// The device's part of a hybrid run so far, or nil when there is no device.
    var hybridReport: HybridReport? {
        guard let placement = sparse?.hybridPlacement, let counts = sparse?.hybrid else { return nil }
        return HybridReport(deviceName: placement.device.info.name, attentionLayers: placement.attentionLayers.count,
                            outputHead: placement.outputHead, counts: counts)
    }
}
