/// Which FFN neurons a run computes (see DESIGN.md section 5).
public enum SparsityMode: Equatable, Sendable, CustomStringConvertible {
    /// Every neuron (the default).
    case dense
    /// ReLU-family models: the gate (or ReLU pre-activation) densely, then only the neurons
    /// whose activation is non-zero. Exact.
    case exact
    /// Gated models: gate densely, then up and down only where |act(gate)| reaches the layer's
    /// calibrated threshold for sparsity S.
    case threshold(Float)
    /// Gated models: gate and up densely, down only where |act(gate) · up| reaches the
    /// layer's threshold for sparsity S. Saves less, keeps far more quality.
    case down(Float)
    /// The predictor picks the active neurons first; gate, up and down all sparse.
    case predictor

    /// The sparsity `down` and `threshold` use when none is given: the largest whose
    /// perplexity rises by at most 2 % on SmolLM2 (scripts/sparsity-bench, README): down:0.4
    /// gave +1.2 % (0.5: +3.2 %). Thresholding |act(gate)| costs +8 % already at 0.3, the
    /// smallest profiled target, so that is its default.
    public static let defaultDownSparsity: Float = 0.4
    public static let defaultThresholdSparsity: Float = 0.3

    /// Parses `dense`, `exact`, `threshold[:S]`, `down[:S]` or `predictor`.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        switch (parts.first ?? "", parts.count) {
        case ("dense", 1): self = .dense
        case ("exact", 1): self = .exact
        case ("predictor", 1): self = .predictor
        case ("down", 1): self = .down(Self.defaultDownSparsity)
        case ("threshold", 1): self = .threshold(Self.defaultThresholdSparsity)
        case ("threshold", 2), ("down", 2):
            guard let s = Float(parts[1]), s > 0, s < 1 else { return nil }
            self = parts[0] == "threshold" ? .threshold(s) : .down(s)
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .dense: return "dense"
        case .exact: return "exact"
        case .threshold(let s): return "threshold:\(s)"
        case .down(let s): return "down:\(s)"
        case .predictor: return "predictor"
        }
    }
}
