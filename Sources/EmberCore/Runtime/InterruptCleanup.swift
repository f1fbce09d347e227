import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Removes registered temporary files and directories when the process is interrupted
/// (SIGINT, SIGTERM, SIGHUP), then lets the signal take its usual course: Ctrl-C during a
/// download or a long write leaves nothing behind.
///
/// The signals are taken over only while something is registered; the previous dispositions
/// come back when the last registration ends. The signal handler only writes the signal's
/// number to a pipe (all a handler may safely do); a thread reading the pipe removes the paths,
/// restores the previous dispositions and raises the signal again.
public enum InterruptCleanup {
    public struct Registration: Sendable, Hashable {
        fileprivate let id: Int
    }

    private static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private static let lock = NSLock()
    nonisolated(unsafe) private static var paths: [Int: String] = [:]
    nonisolated(unsafe) private static var nextID = 0
    nonisolated(unsafe) private static var previous: [Int32: sigaction] = [:]
    nonisolated(unsafe) private static var pipeReady = false

    /// Removes `path` (a file or a whole directory) if the process is interrupted before
    /// `unregister` is called.
    public static func register(_ path: String) -> Registration {
        lock.lock()
        defer { lock.unlock() }
        nextID += 1
        paths[nextID] = path
        if paths.count == 1 { install() }
        return Registration(id: nextID)
    }

    public static func unregister(_ registration: Registration) {
        lock.lock()
        defer { lock.unlock() }
        guard paths.removeValue(forKey: registration.id) != nil else { return }
        if paths.isEmpty { restore() }
    }

    /// Caller holds the lock.
    private static func install() {
        if !pipeReady {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { return }  // no cleanup then, but no failure
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            interruptPipeWriteEnd = fds[1]
            let readEnd = fds[0]
            let thread = Thread { watch(readEnd) }
            thread.name = "ember.interrupt-cleanup"
            thread.start()
            pipeReady = true
        }
        for signal in signals {
            var old = sigaction()
            sigaction(signal, nil, &old)
            // A signal the process ignores (nohup) stays ignored.
            if unsafeBitCast(old.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) { continue }
            previous[signal] = old
            var action = sigaction()
            action.__sigaction_handler.sa_handler = interruptSignalHandler
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(signal, &action, nil)
        }
    }

    /// Caller holds the lock.
    private static func restore() {
        for (signal, old) in previous {
            var restored = old
            sigaction(signal, &restored, nil)
        }
        previous.removeAll()
    }

    private static func watch(_ readEnd: Int32) {
        // A thread started from a dispatch worker (any async code) inherits its mask, which
        // blocks these signals: the raise below would then wait forever.
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        for signal in signals { sigaddset(&unblocked, signal) }
        pthread_sigmask(SIG_UNBLOCK, &unblocked, nil)
        while true {
            var signal: Int32 = 0
            let n = read(readEnd, &signal, MemoryLayout<Int32>.size)
            if n < 0, errno == EINTR { continue }
            guard n == MemoryLayout<Int32>.size else { return }
            lock.lock()
            let doomed = Array(paths.values)
            paths.removeAll()
            restore()
            lock.unlock()
            for path in doomed { try? FileManager.default.removeItem(atPath: path) }
            // The signal's own disposition again (default: terminate), as if never intercepted.
            raise(signal)
        }
    }
}

/// The pipe the handler writes to (set once, before any handler is installed).
nonisolated(unsafe) private var interruptPipeWriteEnd: Int32 = -1

/// Async-signal-safe: one write(2) of the signal number.
private let interruptSignalHandler: @convention(c) (Int32) -> Void = { signal in
    var number = signal
    let saved = errno
    _ = write(interruptPipeWriteEnd, &number, MemoryLayout<Int32>.size)
    errno = saved
}
