import Dispatch
import Foundation

/// Removes registered temporary files and directories when the process is interrupted
/// (SIGINT, SIGTERM, SIGHUP), then lets the signal take its usual course: Ctrl-C during a
/// download or a long write leaves nothing behind.
///
/// The signals are taken over only while something is registered; the previous dispositions
/// come back when the last registration ends. The handler runs on a Dispatch queue, not in
/// signal context, so removing a directory tree there is safe.
public enum InterruptCleanup {
    public struct Registration: Sendable, Hashable {
        fileprivate let id: Int
    }

    private static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    private static let lock = NSLock()
    nonisolated(unsafe) private static var paths: [Int: String] = [:]
    nonisolated(unsafe) private static var nextID = 0
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []
    nonisolated(unsafe) private static var previous: [Int32: sigaction] = [:]
    private static let queue = DispatchQueue(label: "ember.interrupt-cleanup")

    /// Removes `path` (a file or a whole directory) if the process is interrupted before
    /// `unregister` is called.
    public static func register(_ path: String) -> Registration {
        lock.lock()
        defer { lock.unlock() }
        nextID += 1
        paths[nextID] = path
        if sources.isEmpty { install() }
        return Registration(id: nextID)
    }

    public static func unregister(_ registration: Registration) {
        lock.lock()
        defer { lock.unlock() }
        paths[registration.id] = nil
        if paths.isEmpty, !sources.isEmpty { uninstall() }
    }

    /// Caller holds the lock.
    private static func install() {
        for signal in signals {
            var old = sigaction()
            var ignore = sigaction()
            ignore.__sigaction_handler.sa_handler = SIG_IGN
            sigaction(signal, nil, &old)
            // A signal the process already ignores (nohup) stays ignored and is not watched.
            if unsafeBitCast(old.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) { continue }
            previous[signal] = old
            // Dispatch sees the signal only once its default action is off.
            sigaction(signal, &ignore, nil)
            let source = DispatchSource.makeSignalSource(signal: signal, queue: queue)
            source.setEventHandler { interrupted(by: signal) }
            source.resume()
            sources.append(source)
        }
    }

    /// Caller holds the lock.
    private static func uninstall() {
        for source in sources { source.cancel() }
        sources.removeAll()
        for (signal, old) in previous {
            var restored = old
            sigaction(signal, &restored, nil)
        }
        previous.removeAll()
    }

    private static func interrupted(by signal: Int32) {
        lock.lock()
        let doomed = Array(paths.values)
        paths.removeAll()
        uninstall()
        lock.unlock()
        for path in doomed { try? FileManager.default.removeItem(atPath: path) }
        // The signal's own disposition again (default: terminate), as if never intercepted.
        raise(signal)
    }
}
