/// Finds NaN and infinities in float data: a single one in a norm weight, a threshold or a
/// predictor weight turns every later result into NaN (or skips every neuron) without an error.
enum FiniteValues {
    /// The index of the first NaN or infinity in `values`, nil when all are finite.
    static func firstNonFinite(_ values: UnsafeBufferPointer<Float>) -> Int? {
        // Compare exponent bits (all ones: NaN or ±infinity) in blocks, so the common all-finite
        // case runs as a vectorisable OR of masks; only a block with a hit is searched again.
        let count = values.count
        guard let base = values.baseAddress else { return nil }
        return base.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            let exponent: UInt32 = 0x7F80_0000
            var start = 0
            while start < count {
                let end = min(start + 1024, count)
                var hits = 0
                for i in start..<end { hits &+= bits[i] & exponent == exponent ? 1 : 0 }
                if hits > 0 { return (start..<end).first { bits[$0] & exponent == exponent } }
                start = end
            }
            return nil
        }
    }

    static func firstNonFinite(_ values: [Float]) -> Int? {
        values.withUnsafeBufferPointer { firstNonFinite($0) }
    }
}
