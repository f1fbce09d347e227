import Foundation

/// Rotary position embedding: rotates pairs of a head's dimensions by position-dependent angles.
struct Rope: Sendable, Equatable {
    /// Which dimensions form a pair: adjacent ones (GGUF llama, whose Q/K rows are permuted for
    /// it) or the two halves of the rotated part (NeoX style: Gemma, Qwen2).
    enum Layout: Sendable { case adjacent, halves }

    let layout: Layout
    /// Dimensions rotated (the leading part of each head; the rest pass through).
    let dimensions: Int
    /// Angle per position of pair i: base^(-2i/dimensions), divided by any scaling factors.
    let frequencies: [Float]

    init(layout: Layout, dimensions: Int, base: Double, linearScale: Double = 1, frequencyFactors: [Float]? = nil) {
        self.layout = layout
        self.dimensions = dimensions
        frequencies = (0..<dimensions / 2).map { i in
            var f = pow(base, -2 * Double(i) / Double(dimensions)) / linearScale
            if let factors = frequencyFactors, i < factors.count { f /= Double(factors[i]) }
            return Float(f)
        }
    }

    /// The cos/sin of every pair's angle at `position`, computed once and used by all heads
    /// and layers that share this rope.
    func angles(at position: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        for i in 0..<frequencies.count {
            let theta = Double(position) * Double(frequencies[i])
            cos[i] = Float(Foundation.cos(theta))
            sin[i] = Float(Foundation.sin(theta))
        }
    }

    /// Rotates one head vector in place with precomputed angles.
    @inline(__always)
    func rotate(_ head: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
        let half = dimensions / 2
        switch layout {
        case .adjacent:
            for i in 0..<half {
                let a = head[2 * i], b = head[2 * i + 1]
                head[2 * i] = a * cos[i] - b * sin[i]
                head[2 * i + 1] = a * sin[i] + b * cos[i]
            }
        case .halves:
            for i in 0..<half {
                let a = head[i], b = head[i + half]
                head[i] = a * cos[i] - b * sin[i]
                head[i + half] = a * sin[i] + b * cos[i]
            }
        }
    }
}
