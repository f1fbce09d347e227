/// How concentrated activations are at one target sparsity: per layer and over the whole model,
/// the share of neurons that accounts for a given share (80 %) of all activations, and the share
/// of activations the hottest neurons (20 %) account for. PowerInfer's Fig. 4 reports the first:
/// the smaller it is, the more a small hot set placed on a fast device serves.
public struct LocalitySummary: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        /// Share of (neuron, token) pairs inactive.
        public var sparsity: Double
        /// Smallest share of neurons (hottest first) whose activations reach `coverage` of all.
        public var coveringShare: Double
        /// Share of all activations made by the hottest `hotShare` of neurons.
        public var hottestShare: Double
    }

    public var sparsityTarget: Float
    public var coverage: Double
    public var hotShare: Double
    public var layers: [Entry]
    /// All layers' neurons ranked together, as if one block.
    public var overall: Entry

    public init(_ statistics: ActivationStatistics, targetIndex: Int, coverage: Double = 0.8, hotShare: Double = 0.2) {
        precondition(statistics.sparsityTargets.indices.contains(targetIndex))
        sparsityTarget = statistics.sparsityTargets[targetIndex]
        self.coverage = coverage
        self.hotShare = hotShare
        let tokens = statistics.tokens
        layers = statistics.layers.map {
            Self.entry(counts: $0.counts[targetIndex], tokens: tokens, coverage: coverage, hotShare: hotShare)
        }
        overall = Self.entry(counts: statistics.layers.flatMap { $0.counts[targetIndex] }, tokens: tokens,
                             coverage: coverage, hotShare: hotShare)
    }

    /// The entry for one set of neurons' activation counts over `tokens` tokens.
    public static func entry(counts: [Float], tokens: Int, coverage: Double = 0.8, hotShare: Double = 0.2) -> Entry {
        let sorted = counts.map(Double.init).sorted(by: >)
        let total = sorted.reduce(0, +)
        let n = Double(max(sorted.count, 1))
        let sparsity = tokens > 0 ? 1 - total / (Double(tokens) * n) : 0
        guard total > 0 else { return Entry(sparsity: sparsity, coveringShare: 0, hottestShare: 0) }
        var running = 0.0
        var covering = sorted.count
        for (k, c) in sorted.enumerated() {
            running += c
            // A small slack so 80 % of a sum of floats is not missed by rounding.
            if running >= coverage * total * (1 - 1e-12) {
                covering = k + 1
                break
            }
        }
        let hot = Int((hotShare * n).rounded())
        let hottest = sorted.prefix(hot).reduce(0, +) / total
        return Entry(sparsity: sparsity, coveringShare: Double(covering) / n, hottestShare: hottest)
    }

    /// The hottest `share` of neurons of each counts vector, by index (ties to the lower index).
    public static func hottest(_ counts: [Float], share: Double) -> Set<Int> {
        let k = Int((share * Double(counts.count)).rounded())
        let ranked = counts.indices.sorted { counts[$0] != counts[$1] ? counts[$0] > counts[$1] : $0 < $1 }
        return Set(ranked.prefix(k))
    }

    /// Per layer, the share of `a`'s hottest neurons that are also among `b`'s (same model, two
    /// corpora): how stable the hot set is, which is what a placement computed once relies on.
    public static func hotSetOverlap(_ a: ActivationStatistics, _ b: ActivationStatistics, targetIndex: Int,
                                     otherTargetIndex: Int? = nil, share: Double = 0.2) throws -> [Double] {
        guard a.layers.count == b.layers.count, a.feedForwardLength == b.feedForwardLength else {
            throw SparsityError.mismatch("the statistics are of different models: \(a.layers.count) layers × \(a.feedForwardLength) neurons vs \(b.layers.count) × \(b.feedForwardLength)")
        }
        let other = otherTargetIndex ?? targetIndex
        return zip(a.layers, b.layers).map { la, lb in
            let ha = hottest(la.counts[targetIndex], share: share)
            let hb = hottest(lb.counts[other], share: share)
            return ha.isEmpty ? 0 : Double(ha.intersection(hb).count) / Double(ha.count)
        }
    }
}
