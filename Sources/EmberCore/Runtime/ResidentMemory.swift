#if canImport(Glibc)
import Glibc
#endif

/// The process's memory as the kernel counts it.
enum ResidentMemory {
    /// The most resident memory the process has held so far, in bytes (mapped model pages
    /// that were read count too).
    static func peakBytes() -> Int {
        var usage = rusage()
        guard getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0 else { return 0 }
        return usage.ru_maxrss * 1024  // Linux reports kilobytes
    }
}
