import Dispatch

/// Seconds elapsed since `start` (monotonic clock).
func seconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
}
