import Foundation

/// Accumulates how FFN neurons fire over a corpus and turns that into `ActivationStatistics`.
///
/// One pass. Per layer and neuron, a coarse histogram of |act(gate)| (1/16 octave bins); per
/// layer, fine histograms (1/1024 octave) of |act(gate)| and of |act(gate) · up|, all on
/// log-spaced bins from 2^-16 to 2^10 plus bins for exact zeros, (0, 2^-16) and ≥ 2^10.
/// - A layer's threshold for target sparsity S is where its fine cumulative histogram reaches
///   S, linear inside that fine bin: within 0.07 % of the exact quantile of the corpus values,
///   so the sparsity it reaches on the same tokens is the target to about 0.01 %. (Coarse bins
///   alone were not enough: SiLU's values pile up at |min silu| ≈ 0.278, right where the
///   thresholds for 60–80 % fall, and linear interpolation in a 4 % bin missed by up to 2 %.)
/// - A neuron's count is its coarse mass above the threshold's coarse bin plus the part of
///   that bin above the threshold, taken in the proportion the layer's fine histogram has
///   there (its shape inside one 1/16 octave assumed to be the layer's). Per layer the counts
///   then sum to exactly (1 − S) · tokens · F.
/// Memory: F · 419 · 4 bytes per layer (77 MB for SmolLM2-135M) plus 0.4 MB per layer and thread.
public final class ActivationProfiler: @unchecked Sendable {
    public let layerCount: Int
    public let feedForwardLength: Int
    public let activation: VectorKernels.Activation
    /// Target sparsities, ascending (ignored for ReLU models, which have their natural one).
    public let targets: [Float]
    /// Tokens seen per layer (equal once whole batches went through every layer).
    public private(set) var tokensSeen: [Int]
    public private(set) var gated = false

    /// neuronHistograms[l]: F rows of `Bins.coarse.count` counts.
    private let neuronHistograms: [UnsafeMutablePointer<UInt32>]
    /// Per layer and thread, fine histograms of |act(gate)| and |act(gate) · up|; each thread
    /// owns its own so the hot loop needs no atomics.
    private var fineGate: [[UnsafeMutablePointer<UInt64>]]
    private var fineDown: [[UnsafeMutablePointer<UInt64>]]

    public init(layerCount: Int, feedForwardLength: Int, activation: VectorKernels.Activation, targets: [Float]) {
        precondition(layerCount > 0 && feedForwardLength > 0)
        self.layerCount = layerCount
        self.feedForwardLength = feedForwardLength
        self.activation = activation
        self.targets = targets.sorted()
        tokensSeen = Array(repeating: 0, count: layerCount)
        neuronHistograms = (0..<layerCount).map { _ in
            let p = UnsafeMutablePointer<UInt32>.allocate(capacity: feedForwardLength * Bins.coarse.count)
            p.initialize(repeating: 0, count: feedForwardLength * Bins.coarse.count)
            return p
        }
        fineGate = Array(repeating: [], count: layerCount)
        fineDown = Array(repeating: [], count: layerCount)
    }

    public convenience init(config: ModelConfig, targets: [Float]) {
        self.init(layerCount: config.layerCount, feedForwardLength: config.feedForwardLength,
                  activation: config.activation, targets: targets)
    }

    deinit {
        neuronHistograms.forEach { $0.deallocate() }
        (fineGate + fineDown).joined().forEach { $0.deallocate() }
    }

    public func observe(_ o: FeedForwardObservation, pool: ThreadPool) {
        add(layer: o.layer, tokenCount: o.tokenCount, activated: o.activated, up: o.up, pool: pool)
    }

    /// Adds rows 0..<tokenCount of one layer's act(gate) (and up, for gated FFNs).
    public func add(layer: Int, tokenCount: Int, activated: Matrix, up: Matrix?, pool: ThreadPool) {
        precondition(activated.length == feedForwardLength && tokenCount <= activated.rows)
        func zeroed() -> UnsafeMutablePointer<UInt64> {
            let p = UnsafeMutablePointer<UInt64>.allocate(capacity: Bins.fine.count)
            p.initialize(repeating: 0, count: Bins.fine.count)
            return p
        }
        while fineGate[layer].count < pool.threadCount { fineGate[layer].append(zeroed()) }
        while fineDown[layer].count < pool.threadCount { fineDown[layer].append(zeroed()) }
        if up != nil { gated = true }
        let f = feedForwardLength
        let histograms = neuronHistograms[layer]
        let fineGate = self.fineGate[layer], fineDown = self.fineDown[layer]
        let coarse = Bins.coarse, fine = Bins.fine
        pool.run { thread in
            // Neurons in blocks of 64 so their histograms (107 KB) stay in L2 while the block's
            // tokens stream by.
            let gateFine = fineGate[thread]
            let neurons = ThreadPool.share(of: f, thread: thread, threads: pool.threadCount, granularity: 64)
            var block = neurons.lowerBound
            while block < neurons.upperBound {
                let end = min(block + 64, neurons.upperBound)
                for t in 0..<tokenCount {
                    let row = activated.row(t)
                    for i in block..<end {
                        histograms[i * coarse.count + coarse.index(row[i])] += 1
                        gateFine[fine.index(row[i])] += 1
                    }
                }
                block = end
            }
            guard let up else { return }
            let downFine = fineDown[thread]
            for t in ThreadPool.share(of: tokenCount, thread: thread, threads: pool.threadCount) {
                let a = activated.row(t), u = up.row(t)
                for i in 0..<f { downFine[fine.index(a[i] * u[i])] += 1 }
            }
        }
        tokensSeen[layer] += tokenCount
    }

    /// The statistics of everything added so far.
    public func statistics(sourceModel: String = "", corpusSHA256: String = "") -> ActivationStatistics {
        let tokens = tokensSeen.min() ?? 0
        let f = feedForwardLength
        let coarse = Bins.coarse, fine = Bins.fine
        func summed(_ parts: [UnsafeMutablePointer<UInt64>]) -> [UInt64] {
            (0..<fine.count).map { b in parts.reduce(0) { $0 + $1[b] } }
        }

        if activation == .relu {
            // Active means act > 0: everything outside the exact-zero bin. One target, the
            // natural sparsity averaged over layers; thresholds 0.
            let natural = (0..<layerCount).map { l -> Double in
                let total = Double(tokensSeen[l]) * Double(f)
                return total > 0 ? Double(summed(fineGate[l])[0]) / total : 0
            }.reduce(0, +) / Double(layerCount)
            let layers = (0..<layerCount).map { l in
                let h = neuronHistograms[l]
                let counts = (0..<f).map { i in Float(UInt32(tokensSeen[l]) - h[i * coarse.count]) }
                return ActivationStatistics.Layer(gateThresholds: [0], downThresholds: [0], counts: [counts])
            }
            return ActivationStatistics(sourceModel: sourceModel, corpusSHA256: corpusSHA256, tokens: tokens,
                                        activation: activation.rawValue, gated: gated, feedForwardLength: f,
                                        sparsityTargets: [Float(natural)], layers: layers)
        }

        let layers = (0..<layerCount).map { l -> ActivationStatistics.Layer in
            let gateHistogram = summed(fineGate[l])
            let gateCuts = targets.map { fine.cut(gateHistogram, atShare: Double($0)) }
            let downThresholds = gated ? targets.map { fine.cut(summed(fineDown[l]), atShare: Double($0)).threshold }
                                       : gateCuts.map(\.threshold)
            let counts = gateCuts.map { cut in
                // The coarse bin holding the cut, and the share of its (layer) mass below the cut.
                let bin = Bins.coarseIndex(ofFine: cut.bin)
                let members = (0..<fine.count).filter { Bins.coarseIndex(ofFine: $0) == bin }
                let mass = members.reduce(0.0) { $0 + Double(gateHistogram[$1]) }
                let below = members.filter { $0 < cut.bin }.reduce(0.0) { $0 + Double(gateHistogram[$1]) }
                    + cut.fraction * Double(gateHistogram[cut.bin])
                let fraction = mass > 0 ? below / mass : 0
                return (0..<f).map { i -> Float in
                    let h = neuronHistograms[l] + i * coarse.count
                    var above = Double(h[bin]) * (1 - fraction)
                    for b in (bin + 1)..<coarse.count { above += Double(h[b]) }
                    return Float(above)
                }
            }
            return ActivationStatistics.Layer(gateThresholds: gateCuts.map(\.threshold),
                                              downThresholds: downThresholds, counts: counts)
        }
        return ActivationStatistics(sourceModel: sourceModel, corpusSHA256: corpusSHA256, tokens: tokens,
                                    activation: activation.rawValue, gated: gated, feedForwardLength: f,
                                    sparsityTargets: targets, layers: layers)
    }

    /// Log-spaced magnitude bins read straight from a float's bits: the exponent and the top
    /// `subBits` mantissa bits give 2^subBits bins per octave, linear in value inside each.
    /// Bin 0 holds exact zeros, bin 1 (0, 2^-16), the last ≥ 2^10.
    struct Bins {
        let subBits: UInt32
        let shift: UInt32
        /// Keys (bits >> shift) of 2^-16 and 2^10.
        let lowKey: Int
        let highKey: Int
        let count: Int

        init(subBits: UInt32) {
            self.subBits = subBits
            shift = 23 - subBits
            lowKey = (127 - 16) << Int(subBits)
            highKey = (127 + 10) << Int(subBits)
            count = highKey - lowKey + 3
        }

        static let coarse = Bins(subBits: 4)
        static let fine = Bins(subBits: 10)

        /// The coarse bin holding fine bin `b` (fine bins nest exactly in coarse ones).
        static func coarseIndex(ofFine b: Int) -> Int {
            if b < 2 { return b }
            if b == fine.count - 1 { return coarse.count - 1 }
            return ((b - 2 + fine.lowKey) >> Int(fine.subBits - coarse.subBits)) - coarse.lowKey + 2
        }

        @inline(__always)
        func index(_ value: Float) -> Int {
            let bits = value.bitPattern & 0x7fff_ffff
            if bits == 0 { return 0 }
            return min(max(Int(bits >> shift) - lowKey + 2, 1), count - 1)
        }

        /// The values of bin b: [lower, upper).
        func bounds(_ b: Int) -> (lower: Float, upper: Float) {
            switch b {
            case 0: return (0, 0)
            case 1: return (0, Float(bitPattern: UInt32(lowKey) << shift))
            case count - 1: return (Float(bitPattern: UInt32(highKey) << shift), .infinity)
            default:
                let key = UInt32(b - 2 + lowKey)
                return (Float(bitPattern: key << shift), Float(bitPattern: (key + 1) << shift))
            }
        }

        /// Where a histogram's cumulative share reaches `share`: the bin, the fraction of that
        /// bin's mass below the cut, and the threshold value (linear inside the bin).
        func cut(_ histogram: [UInt64], atShare share: Double) -> (bin: Int, fraction: Double, threshold: Float) {
            let total = Double(histogram.reduce(0, +))
            let wanted = share * total
            var below = 0.0
            for b in 0..<count {
                let mass = Double(histogram[b])
                if mass > 0 && below + mass >= wanted {
                    let fraction = min(1, max(0, (wanted - below) / mass))
                    let (lower, upper) = bounds(b)
                    switch b {
                    case 0:
                        // Zeros can't be split by a threshold: cut just above them (the sparsity
                        // reached is then the share of zeros, above the target).
                        return (0, 1, .leastNonzeroMagnitude)
                    case count - 1:
                        return (b, fraction, lower)
                    default:
                        return (b, fraction, lower + Float(fraction) * (upper - lower))
                    }
                }
                below += mass
            }
            return (count - 1, 1, bounds(count - 1).lower)
        }
    }
}

/// Per layer and target, the share of neuron activations a set of thresholds leaves inactive.
public struct MeasuredSparsity: Sendable {
    /// [layer][target]: share with |act(gate)| below the gate threshold (ReLU: act == 0).
    public var gate: [[Double]]
    /// [layer][target]: share with |act(gate) · up| below the down threshold.
    public var down: [[Double]]
}

extension Session {
    /// Runs the model over `tokens` by the perplexity rule (consecutive chunks of `context`
    /// tokens, a shorter tail dropped, each from an empty cache) and records how its FFN neurons
    /// fire. `progress(chunksDone, chunks)` is called after every chunk.
    public func profileActivations(_ tokens: [Int32], context: Int, targets: [Float],
                                   progress: (Int, Int) -> Void = { _, _ in }) throws -> ActivationStatistics {
        let profiler = ActivationProfiler(config: model.config, targets: targets)
        let pool = self.pool
        try runChunks(tokens, context: context, observer: { profiler.observe($0, pool: pool) }, progress: progress)
        return profiler.statistics()
    }

    /// Re-runs `tokens` (same rule) and measures the sparsity each layer has at the thresholds
    /// of `statistics`: a check of the calibration.
    public func measureSparsity(_ tokens: [Int32], context: Int, statistics: ActivationStatistics,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> MeasuredSparsity {
        let layers = statistics.layers.count, targets = statistics.sparsityTargets.count
        let relu = statistics.activation == VectorKernels.Activation.relu.rawValue
        let f = statistics.feedForwardLength
        var gateActive = Array(repeating: Array(repeating: 0, count: targets), count: layers)
        var downActive = gateActive
        var seen = Array(repeating: 0, count: layers)
        let pool = self.pool
        try runChunks(tokens, context: context, observer: { o in
            let layer = statistics.layers[o.layer]
            // Thresholds ascend with the target, so one scan per value finds how many it passes:
            // passed[k] counts values at or above exactly k thresholds. Per thread: gate, down.
            var partial = Array(repeating: Array(repeating: 0, count: 2 * (targets + 1)), count: pool.threadCount)
            partial.withUnsafeMutableBufferPointer { partial in
                pool.run { thread in
                    partial[thread].withUnsafeMutableBufferPointer { passed in
                        for t in ThreadPool.share(of: o.tokenCount, thread: thread, threads: pool.threadCount) {
                            let a = o.activated.row(t)
                            let u = o.up?.row(t)
                            for i in 0..<f {
                                let gate = relu ? (a[i] > 0 ? Float.infinity : -1) : abs(a[i])
                                let down = relu ? gate : abs(u == nil ? a[i] : a[i] * u![i])
                                var k = 0
                                while k < targets && gate >= layer.gateThresholds[k] { k += 1 }
                                passed[k] += 1
                                k = 0
                                while k < targets && down >= layer.downThresholds[k] { k += 1 }
                                passed[targets + 1 + k] += 1
                            }
                        }
                    }
                }
            }
            for p in partial {
                for s in 0..<targets {
                    // Active at target s: values passing more than s thresholds.
                    gateActive[o.layer][s] += p[(s + 1)...targets].reduce(0, +)
                    downActive[o.layer][s] += p[(targets + 2 + s)...(2 * targets + 1)].reduce(0, +)
                }
            }
            seen[o.layer] += o.tokenCount
        }, progress: progress)
        func shares(_ active: [[Int]]) -> [[Double]] {
            active.enumerated().map { l, row in row.map { 1 - Double($0) / (Double(seen[l]) * Double(f)) } }
        }
        return MeasuredSparsity(gate: shares(gateActive), down: shares(downActive))
    }

    /// Evaluates `tokens` in chunks of `context` from an empty cache with `observer` watching
    /// every FFN; the observer is removed afterwards, even on error.
    private func runChunks(_ tokens: [Int32], context: Int, observer: @escaping (FeedForwardObservation) -> Void,
                           progress: (Int, Int) -> Void) throws {
        guard context >= 1 else { throw PerplexityError.contextTooSmall(context) }
        guard context <= contextLength else { throw ModelError.contextOverflow(needed: context, context: contextLength) }
        let chunks = tokens.count / context
        guard chunks > 0 else { throw PerplexityError.textTooShort(tokens: tokens.count, context: context) }
        pass.feedForwardObserver = observer
        defer {
            pass.feedForwardObserver = nil
            reset()
        }
        for chunk in 0..<chunks {
            reset()
            try evaluate(Array(tokens[chunk * context..<(chunk + 1) * context]))
            progress(chunk + 1, chunks)
        }
    }
}

/// SHA-256 (FIPS 180-4), for the corpus digest stored with the statistics: Foundation on Linux
/// has no hashing and Ember takes no packages.
public enum SHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    /// The digest of `bytes` as 64 lowercase hex digits.
    public static func hex<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var message = Array(bytes)
        let bitLength = UInt64(message.count) * 8
        message.append(0x80)
        while message.count % 64 != 56 { message.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { message.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
        func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { x >> n | x << (32 - n) }
        var w = [UInt32](repeating: 0, count: 64)
        for block in stride(from: 0, to: message.count, by: 64) {
            for i in 0..<16 {
                w[i] = (0..<4).reduce(0) { $0 << 8 | UInt32(message[block + 4 * i + $1]) }
            }
            for i in 16..<64 {
                let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let t1 = hh &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[i] &+ w[i]
                let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            for (i, v) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ v }
        }
        return h.map { String(format: "%08x", $0) }.joined()
    }
}
