import Foundation

/// Measures how fast the machine streams memory: decode reads every weight once per token, so
/// this read rate bounds decode speed (tokens/s ≤ bandwidth ÷ bytes per token).
enum MemoryBandwidth {
    /// Bytes per second read by `threads` threads together (each reading its own part of a
    /// buffer much larger than the caches); the best of `repetitions` passes.
    static func measureRead(threads: Int, bytes: Int = 512 << 20, repetitions: Int = 4,
                                   run: ((Int) -> Void) -> Void) -> Double {
        let count = bytes / MemoryLayout<SIMD8<Float>>.stride
        let buffer = UnsafeMutablePointer<SIMD8<Float>>.allocate(capacity: count)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: SIMD8(repeating: 1), count: count)  // also faults the pages in
        var best = 0.0
        let sink = UnsafeMutablePointer<Float>.allocate(capacity: threads)
        defer { sink.deallocate() }
        for _ in 0..<repetitions {
            let start = DispatchTime.now()
            run { thread in
                let share = count / threads
                sink[thread] = sum(buffer + thread * share, share)
            }
            let elapsed = seconds(since: start)
            best = max(best, Double(count / threads * threads * MemoryLayout<SIMD8<Float>>.stride) / elapsed)
        }
        return best
    }

    /// Four independent accumulators keep several loads in flight.
    private static func sum(_ p: UnsafePointer<SIMD8<Float>>, _ count: Int) -> Float {
        var a = SIMD8<Float>(), b = SIMD8<Float>(), c = SIMD8<Float>(), d = SIMD8<Float>()
        var i = 0
        while i + 4 <= count {
            a += p[i]; b += p[i + 1]; c += p[i + 2]; d += p[i + 3]
            i += 4
        }
        while i < count { a += p[i]; i += 1 }
        return (a + b + c + d).sum()
    }
}
