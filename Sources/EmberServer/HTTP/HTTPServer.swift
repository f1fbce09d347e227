import Foundation
import Glibc
import Synchronization

// Concurrency model: one accept thread, and one thread per connection up to a bound
// (`maxConnections`), each doing blocking-style I/O through poll with deadlines.
//
// Why threads and not an event loop with tasks: generation keeps every core busy (two here), and
// the Swift cooperative pool has one thread per core. Socket work kept off that pool means a
// busy engine can never delay a header timeout, a slow client's eviction, /health or /metrics.
// Each connection reads top to bottom (read a request, handle it, write, repeat), the bound keeps
// the thread count small, and the only state shared between threads is behind a Mutex or an
// eventfd. Generation is the one async part: a connection follows an AsyncSequence through a
// task that posts events to a mailbox the connection thread polls beside its socket (HTTPExchange).

/// Where the server listens and how it guards itself.
public struct HTTPServerConfiguration: Sendable {
    /// Loopback by default: serving beyond this machine is a choice (`0.0.0.0`).
    public var host: String
    /// 0 picks a free port (see `HTTPServer.port`).
    public var port: Int
    public var limits: HTTPLimits
    /// Connections served at once; one more is answered 503 and closed.
    public var maxConnections: Int
    /// From a request's first byte to the end of its head (slow-header clients are cut off).
    public var headerTimeout: Duration
    /// From the end of the head to the end of the body.
    public var bodyTimeout: Duration
    /// How long a kept-alive connection may sit between requests.
    public var idleTimeout: Duration
    /// How long a write may make no progress (a client that stops reading is dropped).
    public var writeTimeout: Duration

    public init(host: String = "127.0.0.1", port: Int = 8080, limits: HTTPLimits = HTTPLimits(),
                maxConnections: Int = 64, headerTimeout: Duration = .seconds(10), bodyTimeout: Duration = .seconds(30),
                idleTimeout: Duration = .seconds(60), writeTimeout: Duration = .seconds(30)) {
        self.host = host
        self.port = port
        self.limits = limits
        self.maxConnections = maxConnections
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.idleTimeout = idleTimeout
        self.writeTimeout = writeTimeout
    }
}

/// What answers requests. `handle` runs on the connection's thread and must respond (if it does
/// not, the server answers 500).
public protocol HTTPHandler: Sendable {
    func handle(_ exchange: HTTPExchange)
    /// The response for a request the server itself refuses: one it cannot read (400, 411, 413,
    /// 431, 505), too slow (408), or one connection too many (503).
    func errorResponse(status: Int, message: String) -> HTTPResponse
}

/// The two signals of a stop, each raised once and never lowered.
final class ShutdownSignals: Sendable {
    /// No new connections or requests; requests under way may finish.
    let draining: WakeSignal
    /// Requests under way are abandoned: every wait returns.
    let cancelling: WakeSignal

    init() throws {
        draining = try WakeSignal()
        cancelling = try WakeSignal()
    }

    var isDraining: Bool { draining.isSignalled }
}

/// Counts the connection threads and wakes a waiter when none is left.
final class ThreadCount: Sendable {
    private let count = Mutex(0)
    private let noneLeft: WakeSignal

    init() throws { noneLeft = try WakeSignal() }

    /// Counts one more thread unless `limit` are running.
    func enter(limit: Int) -> Bool {
        count.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func leave() {
        let remaining = count.withLock { count in
            count -= 1
            return count
        }
        if remaining == 0 { noneLeft.signal() }
    }

    var current: Int { count.withLock { $0 } }

    /// Waits until no thread is counted; false if `deadline` passed first.
    func waitUntilNone(deadline: ContinuousClock.Instant) -> Bool {
        while true {
            noneLeft.reset()  // a signal from an earlier moment of zero means nothing now
            if current == 0 { return true }
            if waitForEvents(noneLeft.descriptor, Int16(POLLIN), wakers: [], deadline: deadline) == .timedOut { return false }
        }
    }
}

public final class HTTPServer: Sendable {
    public let configuration: HTTPServerConfiguration
    /// The port bound (the one chosen by the system when the configuration said 0).
    public let port: Int
    private let listener: TCPListener
    private let handler: any HTTPHandler
    private let signals: ShutdownSignals
    private let threads: ThreadCount
    private let acceptEnded: WakeSignal

    /// Binds and starts accepting. Throws when the address cannot be bound.
    public init(configuration: HTTPServerConfiguration, handler: any HTTPHandler) throws {
        self.configuration = configuration
        self.handler = handler
        listener = try TCPListener(host: configuration.host, port: configuration.port)
        port = listener.port
        signals = try ShutdownSignals()
        threads = try ThreadCount()
        acceptEnded = try WakeSignal()
        let server = self
        Self.spawn { server.acceptLoop() }
    }

    /// Connections being served now.
    public var openConnections: Int { threads.current }

    /// True once `stop` has begun.
    public var isStopping: Bool { signals.isDraining }

    /// Stops accepting, lets requests under way finish for up to `grace`, then cancels the rest
    /// (their generations end, their connections close) and returns once every connection thread
    /// has ended. Returns false if some thread was still running `cancelBound` after that.
    @discardableResult
    public func stop(grace: Duration = .seconds(10), cancelBound: Duration = .seconds(5)) -> Bool {
        let graceEnd = ContinuousClock.now + grace
        signals.draining.signal()
        // The accept thread sees the signal at once; after it ends no connection can start.
        _ = waitForEvents(acceptEnded.descriptor, Int16(POLLIN), wakers: [], deadline: nil)
        if threads.waitUntilNone(deadline: graceEnd) { return true }
        signals.cancelling.signal()
        return threads.waitUntilNone(deadline: .now + cancelBound)
    }

    private func acceptLoop() {
        defer {
            listener.close()
            acceptEnded.signal()
        }
        while true {
            switch waitForEvents(listener.descriptor, Int16(POLLIN), wakers: [signals.draining], deadline: nil) {
            case .woken:
                return
            case .timedOut, .ready:
                break
            }
            let descriptor: Int32
            do {
                guard let accepted = try listener.accept() else { continue }
                descriptor = accepted
            } catch {
                // Out of descriptors (EMFILE): pause rather than spin; pending clients wait in the backlog.
                usleep(50_000)
                continue
            }
            guard threads.enter(limit: configuration.maxConnections) else {
                refuse(descriptor)
                continue
            }
            let (configuration, handler, signals, threads) = (configuration, handler, signals, threads)
            Self.spawn {
                HTTPConnection(descriptor: descriptor, configuration: configuration, handler: handler, signals: signals).run()
                threads.leave()
            }
        }
    }

    /// One connection too many: a best-effort 503 (the socket is fresh, so its buffer takes it).
    private func refuse(_ descriptor: Int32) {
        let response = handler.errorResponse(status: 503, message: "too many connections; retry later")
        var withRetry = response
        withRetry.headers.append(("Retry-After", "1"))
        _ = SocketIO.send(descriptor, withRetry.serialized(keepAlive: false)[...])
        close(descriptor)
    }

    /// Threads with a small stack: connection work is shallow (JSON nesting is bounded by the
    /// decoder's own depth limit, checked in the tests).
    private static func spawn(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.stackSize = 1 << 20
        thread.start()
    }
}
