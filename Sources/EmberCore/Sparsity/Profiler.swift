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
final class ActivationProfiler {
    let layerCount: Int
    let feedForwardLength: Int
    let activation: VectorKernels.Activation
    /// Target sparsities, ascending (ignored for ReLU models, which have their natural one).
    let targets: [Float]
    /// Tokens seen per layer (equal once whole batches went through every layer).
    private(set) var tokensSeen: [Int]
    private(set) var gated = false

    /// Per layer and thread, histograms of |act(gate)| and |act(gate) · up|; each thread owns
    /// its own so the hot loop needs no atomics.
    private var gateHistograms: [[UnsafeMutablePointer<UInt64>]]
    private var downHistograms: [[UnsafeMutablePointer<UInt64>]]
    /// Per layer and neuron, tokens with act > 0 (the ReLU counts).
    private var positive: [[Int]]

    init(layerCount: Int, feedForwardLength: Int, activation: VectorKernels.Activation, targets: [Float]) {
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

    convenience init(config: ModelConfig, targets: [Float]) {
        self.init(layerCount: config.layerCount, feedForwardLength: config.feedForwardLength,
                  activation: config.activation, targets: targets)
    }

    deinit { (gateHistograms + downHistograms).joined().forEach { $0.deallocate() } }

    func observe(_ o: FeedForwardObservation, pool: ThreadPool) {
        add(layer: o.layer, tokenCount: o.tokenCount, activated: o.activated, up: o.up, pool: pool)
    }

    /// Adds rows 0..<tokenCount of one layer's act(gate) (and up, for gated FFNs).
    func add(layer: Int, tokenCount: Int, activated: Matrix, up: Matrix?, pool: ThreadPool) {
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
    func statistics(sourceModel: String = "", corpusSHA256: String = "") -> ActivationStatistics {
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
