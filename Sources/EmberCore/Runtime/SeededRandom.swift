import Foundation

/// A small, fast, seedable generator (Steele, Lea and Flood 2014) so runs with `--seed` repeat.
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Draws for weight initialisation and shuffling.
extension SplitMix64 {
    /// Uniform in (0, 1].
    mutating func uniform() -> Float { Float((next() >> 40) + 1) / Float(1 << 24) }

    /// Standard normal (Box–Muller).
    mutating func normal() -> Float {
        let u = uniform(), v = uniform()
        return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
    }

    /// Fisher–Yates with this generator, so the order is fixed by the seed on every platform.
    mutating func shuffle<T>(_ a: inout [T]) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) {
            a.swapAt(i, Int(next() % UInt64(i + 1)))
        }
    }
}
