import Foundation
import Glibc

/// SIGTERM and SIGINT as an event a server waits for: the handler only writes the signal's
/// number to a pipe (all a handler may safely do), and `wait` reads it on a thread of its own.
/// Installed once per process; `trigger` posts a stop without a signal (a failed load, say).
public final class StopSignal: Sendable {
    private let readEnd: Int32
    private let writeEnd: Int32

    /// Takes over SIGTERM and SIGINT (SIGPIPE is ignored too: a client that leaves must not end
    /// the server).
    public init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw StopSignalError.noPipe(errno) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        readEnd = fds[0]
        writeEnd = fds[1]
        stopSignalWriteEnd = writeEnd
        signal(SIGPIPE, SIG_IGN)
        for number in [SIGTERM, SIGINT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = stopSignalHandler
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(number, &action, nil)
        }
    }

    /// Posts a stop as if a signal had come (number 0).
    public func trigger() {
        var number: Int32 = 0
        _ = write(writeEnd, &number, MemoryLayout<Int32>.size)
    }

    /// Waits, on a thread of its own, for the first signal (or `trigger`); returns its number.
    public func wait() async -> Int32 {
        let readEnd = readEnd
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                // Threads started from async code inherit a mask that blocks these signals; this
                // one unblocks them, so the kernel always has a thread to deliver them to.
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, SIGTERM)
                sigaddset(&set, SIGINT)
                pthread_sigmask(SIG_UNBLOCK, &set, nil)
                var number: Int32 = 0
                while true {
                    let n = read(readEnd, &number, MemoryLayout<Int32>.size)
                    if n < 0, errno == EINTR { continue }
                    break
                }
                continuation.resume(returning: number)
            }
            thread.name = "ember.stop-signal"
            thread.start()
        }
    }
}

public enum StopSignalError: Error, CustomStringConvertible {
    case noPipe(Int32)

    public var description: String {
        switch self {
        case .noPipe(let code): "cannot make a pipe for signals: \(String(cString: strerror(code)))"
        }
    }
}

/// The pipe the handler writes to (set before the handler is installed).
nonisolated(unsafe) private var stopSignalWriteEnd: Int32 = -1

/// Async-signal-safe: one write(2) of the signal number.
private let stopSignalHandler: @convention(c) (Int32) -> Void = { number in
    var value = number
    let saved = errno
    _ = write(stopSignalWriteEnd, &value, MemoryLayout<Int32>.size)
    errno = saved
}
