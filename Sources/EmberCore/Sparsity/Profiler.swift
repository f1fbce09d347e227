import Foundation

/// The first of the profiler's two passes: calibrates per-layer thresholds for target
/// sparsities from histograms of the FFN activations. The second pass
/// (`Session.profileActivations`) counts each neuron exactly at those thresholds and moves each
/// threshold to the exact quantile.
///
/// Per layer, histograms of |act(gate)| and of |act(gate) · up| on log-spaced bins, 1024 per
/// octave from 2^-16 to 2^10, plus bins for exact zeros, (0, 2^-16) and ≥ 2^10. A threshold
/// for target S is where the layer's cumulative histogram reaches S, linear inside that bin:
/// within 0.07 % of the exact quantile of the corpus values, so on the same tokens it reaches
/// the target to about 0.01 % — except right on the pile-up at the activation's minimum
/// (|min silu| ≈ 0.2785: 3 % of SmolLM2's values lie within 0.2 % of it; |min gelu| ≈ 0.17),
/// where one bin holds a sizeable mass: there it missed by up to 0.23 % (SmolLM2, one layer,
/// 90 %) and 0.32 % (Gemma 3 270M, one layer, 80 %). The second pass therefore collects the
/// values within ±0.2 % of each gate threshold and takes the exact quantile: the stored gate
/// thresholds reach their targets on the calibration tokens to one value (tested to 1e-5), and
/// the counts sum to (1 − S) · tokens · F. Down thresholds keep the histogram estimate
/// (measured within 0.01 %: the product has no pile-up).
///
/// Why not one pass with per-neuron histograms: a neuron whose gate often sits near the
/// activation's minimum has a shape inside any affordable bin unlike its layer's. Per-neuron
/// counts interpolated in 1/16-octave bins missed by up to 13 % of the tokens (68 of 512);
/// exact counts cost one more forward pass.
///
/// ReLU models need no calibration: active means act > 0, counted exactly here in one pass.
public final class ActivationProfiler: @unchecked Sendable {
    public let layerCount: Int
    public let feedForwardLength: Int
    public let activation: VectorKernels.Activation
    /// Target sparsities, ascending (ignored for ReLU models, which have their natural one).
    public let targets: [Float]
    /// Tokens seen per layer (equal once whole batches went through every layer).
    public private(set) var tokensSeen: [Int]
    public private(set) var gated = false

    /// Per layer and thread, histograms of |act(gate)| and |act(gate) · up|; each thread owns
    /// its own so the hot loop needs no atomics.
    private var gateHistograms: [[UnsafeMutablePointer<UInt64>]]
    private var downHistograms: [[UnsafeMutablePointer<UInt64>]]
    /// Per layer and neuron, tokens with act > 0 (the ReLU counts).
    private var positive: [[Int]]

    public init(layerCount: Int, feedForwardLength: Int, activation: VectorKernels.Activation, targets: [Float]) {
        precondition(layerCount > 0 && feedForwardLength > 0)
        self.layerCount = layerCount
        self.feedForwardLength = feedForwardLength
        self.activation = activation
        self.targets = targets.sorted()
        tokensSeen = Array(repeating: 0, count: layerCount)
        gateHistograms = Array(repeating: [], count: layerCount)
        downHistograms = Array(repeating: [], count: layerCount)
        positive = Array(repeating: Array(repeating: 0, count: feedForwardLength), count: layerCount)
    }

    public convenience init(config: ModelConfig, targets: [Float]) {
        self.init(layerCount: config.layerCount, feedForwardLength: config.feedForwardLength,
                  activation: config.activation, targets: targets)
    }

    deinit { (gateHistograms + downHistograms).joined().forEach { $0.deallocate() } }

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
        while gateHistograms[layer].count < pool.threadCount { gateHistograms[layer].append(zeroed()) }
        while downHistograms[layer].count < pool.threadCount { downHistograms[layer].append(zeroed()) }
        if up != nil { gated = true }
        let f = feedForwardLength
        let gateHistograms = self.gateHistograms[layer], downHistograms = self.downHistograms[layer]
        let fine = Bins.fine
        positive[layer].withUnsafeMutableBufferPointer { positive in
            pool.run { thread in
                // Threads own disjoint neurons, so the per-neuron counters need no locks.
                let neurons = ThreadPool.share(of: f, thread: thread, threads: pool.threadCount, granularity: 16)
                let gateHistogram = gateHistograms[thread], downHistogram = downHistograms[thread]
                for t in 0..<tokenCount {
                    let a = activated.row(t)
                    for i in neurons {
                        gateHistogram[fine.index(a[i])] += 1
                        if a[i] > 0 { positive[i] += 1 }
                    }
                    if let up {
                        let u = up.row(t)
                        for i in neurons { downHistogram[fine.index(a[i] * u[i])] += 1 }
                    }
                }
            }
        }
        tokensSeen[layer] += tokenCount
    }

    /// The calibrated statistics. For ReLU models they are complete; otherwise each layer has
    /// its thresholds and zero counts, to be filled by counting at those thresholds.
    public func statistics(sourceModel: String = "", corpusSHA256: String = "") -> ActivationStatistics {
        let tokens = tokensSeen.min() ?? 0
        let f = feedForwardLength
        let fine = Bins.fine
        func summed(_ parts: [UnsafeMutablePointer<UInt64>]) -> [UInt64] {
            (0..<fine.count).map { b in parts.reduce(0) { $0 + $1[b] } }
        }

        if activation == .relu {
            // Active means act > 0. One target, the natural sparsity averaged over layers;
            // thresholds 0.
            let natural = (0..<layerCount).map { l -> Double in
                let total = Double(tokensSeen[l]) * Double(f)
                return total > 0 ? 1 - Double(positive[l].reduce(0, +)) / total : 0
            }.reduce(0, +) / Double(layerCount)
            let layers = positive.map {
                ActivationStatistics.Layer(gateThresholds: [0], downThresholds: [0], counts: [$0.map(Float.init)])
            }
            return ActivationStatistics(sourceModel: sourceModel, corpusSHA256: corpusSHA256, tokens: tokens,
                                        activation: activation.rawValue, gated: gated, feedForwardLength: f,
                                        sparsityTargets: [Float(natural)], layers: layers)
        }

        let layers = (0..<layerCount).map { l -> ActivationStatistics.Layer in
            let gate = summed(gateHistograms[l])
            let gateThresholds = targets.map { fine.threshold(gate, atShare: Double($0)) }
            let down = gated ? summed(downHistograms[l]) : gate
            return ActivationStatistics.Layer(gateThresholds: gateThresholds,
                                              downThresholds: targets.map { fine.threshold(down, atShare: Double($0)) },
                                              counts: targets.map { _ in Array(repeating: 0, count: f) })
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

        static let fine = Bins(subBits: 10)

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

        /// The value where a histogram's cumulative share reaches `share`, linear inside the bin
        /// that crosses it.
        func threshold(_ histogram: [UInt64], atShare share: Double) -> Float {
            let wanted = share * Double(histogram.reduce(0, +))
            var below = 0.0
            for b in 0..<count {
                let mass = Double(histogram[b])
                if mass > 0 && below + mass >= wanted {
                    let fraction = Float(min(1, max(0, (wanted - below) / mass)))
                    let (lower, upper) = bounds(b)
                    switch b {
                    // Zeros can't be split by a threshold: cut just above them (the sparsity
                    // reached is then the share of zeros, above the target).
                    case 0: return .leastNonzeroMagnitude
                    case count - 1: return lower
                    default: return lower + fraction * (upper - lower)
                    }
                }
                below += mass
            }
            return bounds(count - 1).lower
        }
    }
}

/// What a set of thresholds does on a text, counted exactly: per layer and target, the share of
/// neuron activations left inactive, and each neuron's active count.
public struct MeasuredSparsity: Sendable {
    /// [layer][target]: share with |act(gate)| below the gate threshold (ReLU: act == 0).
    public var gate: [[Double]]
    /// [layer][target]: share with |act(gate) · up| below the down threshold.
    public var down: [[Double]]
    /// [layer][target][neuron]: tokens with |act(gate)| at or above the gate threshold.
    public var counts: [[[Float]]]
}

/// What `Session.profileActivations` found: the statistics, and for calibrated models the
/// sparsity their thresholds reach on the same tokens (the check of the calibration).
public struct ActivationProfile: Sendable {
    public var statistics: ActivationStatistics
    public var measured: MeasuredSparsity?
}

extension Session {
    /// Runs the model over `tokens` by the perplexity rule (consecutive chunks of `context`
    /// tokens, a shorter tail dropped, each from an empty cache) and records how its FFN neurons
    /// fire: a pass to calibrate the thresholds, then one to count each neuron at them, which
    /// also measures the sparsity they reach (ReLU models: one pass, nothing to calibrate).
    /// `progress(chunksDone, chunks)` is called after every chunk of either.
    public func profileActivations(_ tokens: [Int32], context: Int, targets: [Float],
                                   progress: (Int, Int) -> Void = { _, _ in }) throws -> ActivationProfile {
        let profiler = ActivationProfiler(config: model.config, targets: targets)
        let pool = self.pool
        let chunks = tokens.count / max(context, 1)
        let passes = model.config.activation == .relu ? 1 : 2
        try runChunks(tokens, context: context, observer: { profiler.observe($0, pool: pool) }) { done, _ in
            progress(done, passes * chunks)
        }
        var statistics = profiler.statistics()
        guard passes == 2 else { return ActivationProfile(statistics: statistics, measured: nil) }
        var near: NearValues = Array(repeating: Array(repeating: [], count: statistics.sparsityTargets.count),
                                     count: statistics.layers.count)
        var measured = try measureSparsity(tokens, context: context, statistics: statistics, near: &near) { done, _ in
            progress(chunks + done, passes * chunks)
        }
        for l in statistics.layers.indices {
            for s in statistics.sparsityTargets.indices {
                Self.refine(&statistics, &measured, layer: l, target: s, near: near[l][s])
            }
            statistics.layers[l].counts = measured.counts[l]
        }
        return ActivationProfile(statistics: statistics, measured: measured)
    }

    /// Moves a gate threshold from its histogram estimate to the exact quantile of the values
    /// seen, using the values counted near it, and corrects the neurons' counts to match. The
    /// histogram's bin is exact, so the quantile lies within the window; the estimate inside it
    /// can miss where values pile up at the activation's minimum.
    static func refine(_ statistics: inout ActivationStatistics, _ measured: inout MeasuredSparsity,
                       layer l: Int, target s: Int, near: [(value: Float, neuron: Int32)]) {
        let threshold = statistics.layers[l].gateThresholds[s]
        guard threshold > .leastNonzeroMagnitude, !near.isEmpty else { return }
        let f = statistics.feedForwardLength
        let all = Double(statistics.tokens) * Double(f)
        let active = measured.counts[l][s].reduce(0.0) { $0 + Double($1) }
        let sorted = near.sorted { $0.value < $1.value }
        // Inactive values below the window, and how many of the window's must join them.
        let belowWindow = (all - active) - Double(sorted.prefix { $0.value < threshold }.count)
        let wanted = (Double(statistics.sparsityTargets[s]) * all).rounded() - belowWindow
        guard wanted >= 0, wanted < Double(sorted.count) else { return }
        let exact = sorted[Int(wanted)].value
        // Thresholds must keep the order of their targets; one that would cross a neighbour
        // (windows overlapping) stays where the histogram put it.
        let thresholds = statistics.layers[l].gateThresholds
        guard s == 0 || exact >= thresholds[s - 1], s + 1 == thresholds.count || exact <= thresholds[s + 1] else { return }
        for (value, neuron) in sorted {
            if value >= threshold && value < exact { measured.counts[l][s][Int(neuron)] -= 1 }
            if value >= exact && value < threshold { measured.counts[l][s][Int(neuron)] += 1 }
        }
        statistics.layers[l].gateThresholds[s] = exact
        measured.gate[l][s] = 1 - measured.counts[l][s].reduce(0.0) { $0 + Double($1) } / all
    }

    /// Re-runs `tokens` (same rule) and counts exactly what the thresholds of `statistics` do:
    /// a check of the calibration.
    public func measureSparsity(_ tokens: [Int32], context: Int, statistics: ActivationStatistics,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> MeasuredSparsity {
        try measureSparsity(tokens, context: context, statistics: statistics, near: nil, progress: progress)
    }

    /// Gate values within `Self.window` of each gate threshold, with their neuron: [layer][target].
    typealias NearValues = [[[(value: Float, neuron: Int32)]]]
    /// Half-width of the window around a threshold, relative: three 1/1024-octave bins, so it
    /// holds the bin where the exact quantile lies.
    static let window: Float = 1.0 / 512

    func measureSparsity(_ tokens: [Int32], context: Int, statistics: ActivationStatistics,
                         near: UnsafeMutablePointer<NearValues>?, progress: (Int, Int) -> Void) throws -> MeasuredSparsity {
        let layers = statistics.layers.count, targets = statistics.sparsityTargets.count
        let relu = statistics.activation == VectorKernels.Activation.relu.rawValue
        let f = statistics.feedForwardLength
        // Thresholds ascend with the target, so one scan per value finds how many it passes.
        // gatePassed[l][i * (targets + 1) + k]: tokens on which neuron i passed exactly k gate
        // thresholds; downPassed[l][k] the same for the down thresholds, over all neurons.
        var gatePassed = Array(repeating: [Int](repeating: 0, count: f * (targets + 1)), count: layers)
        var downPassed = Array(repeating: [Int](repeating: 0, count: targets + 1), count: layers)
        var seen = Array(repeating: 0, count: layers)
        let pool = self.pool
        try runChunks(tokens, context: context, observer: { o in
            let layer = statistics.layers[o.layer]
            var partialDown = Array(repeating: [Int](repeating: 0, count: targets + 1), count: pool.threadCount)
            let collecting = near != nil
            let lows = layer.gateThresholds.map { $0 * (1 - Self.window) }
            let highs = layer.gateThresholds.map { $0 * (1 + Self.window) }
            var partialNear = Array(repeating: Array(repeating: [(value: Float, neuron: Int32)](), count: targets),
                                    count: pool.threadCount)
            gatePassed[o.layer].withUnsafeMutableBufferPointer { gate in
                partialDown.withUnsafeMutableBufferPointer { partialDown in
                  partialNear.withUnsafeMutableBufferPointer { partialNear in
                    pool.run { thread in
                        // Threads own disjoint neurons, so the per-neuron counters need no locks.
                        let neurons = ThreadPool.share(of: f, thread: thread, threads: pool.threadCount, granularity: 16)
                        partialDown[thread].withUnsafeMutableBufferPointer { down in
                            for t in 0..<o.tokenCount {
                                let a = o.activated.row(t)
                                let u = o.up?.row(t)
                                for i in neurons {
                                    let g = relu ? (a[i] > 0 ? Float.infinity : -1) : abs(a[i])
                                    let d = relu ? g : abs(u == nil ? a[i] : a[i] * u![i])
                                    var k = 0
                                    while k < targets && g >= layer.gateThresholds[k] { k += 1 }
                                    gate[i * (targets + 1) + k] += 1
                                    if collecting {
                                        // g lies between thresholds k - 1 and k: near either?
                                        if k < targets && g >= lows[k] { partialNear[thread][k].append((g, Int32(i))) }
                                        if k > 0 && g < highs[k - 1] { partialNear[thread][k - 1].append((g, Int32(i))) }
                                    }
                                    k = 0
                                    while k < targets && d >= layer.downThresholds[k] { k += 1 }
                                    down[k] += 1
                                }
                            }
                        }
                    }
                  }
                }
            }
            if let near {
                for p in partialNear {
                    for t in 0..<targets { near.pointee[o.layer][t] += p[t] }
                }
            }
            for p in partialDown {
                for k in 0...targets { downPassed[o.layer][k] += p[k] }
            }
            seen[o.layer] += o.tokenCount
        }, progress: progress)
        // Active at target s: passed more than s thresholds.
        let counts = (0..<layers).map { l in
            (0..<targets).map { s in
                (0..<f).map { i in Float(gatePassed[l][(i * (targets + 1) + s + 1)...(i * (targets + 1) + targets)].reduce(0, +)) }
            }
        }
        let all = { (l: Int) in Double(seen[l]) * Double(f) }
        return MeasuredSparsity(
            gate: (0..<layers).map { l in counts[l].map { 1 - $0.reduce(0.0) { $0 + Double($1) } / all(l) } },
            down: (0..<layers).map { l in (0..<targets).map { s in 1 - Double(downPassed[l][(s + 1)...].reduce(0, +)) / all(l) } },
            counts: counts)
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
