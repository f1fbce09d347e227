import Glibc
import Synchronization

/// Why a response under way was cut short.
public enum ExchangeInterruption: Error, Sendable, Equatable {
    /// The client closed its connection or stopped reading.
    case clientGone
    /// The server's stop ran out of grace.
    case serverStopping
}

/// One request and the means to answer it: at once (`respond`) or as a stream of parts
/// (`beginStream`, `sendStreamPart`, `endStream`). Lives on its connection's thread only.
public final class HTTPExchange {
    public let request: HTTPRequest
    private let connection: HTTPConnection
    public private(set) var hasResponded = false
    /// False once a write failed: the connection is then closed.
    private(set) var wroteCompletely = true
    private var keepAliveAfterResponse = false
    private var streamFraming: HTTPResponse.Framing?

    init(request: HTTPRequest, connection: HTTPConnection) {
        self.request = request
        self.connection = connection
    }

    /// True once the server's stop has begun (health checks should then fail).
    public var serverIsStopping: Bool { connection.signals.isDraining }

    var keepsConnection: Bool { keepAliveAfterResponse && wroteCompletely && connection.acceptsMoreRequests }

    /// Sends a complete response (for HEAD, its head only).
    public func respond(_ response: HTTPResponse) {
        precondition(!hasResponded, "one response per request")
        hasResponded = true
        keepAliveAfterResponse = request.keepAlive && connection.acceptsMoreRequests
        var bytes = response.head(keepAlive: keepAliveAfterResponse, framing: .length(response.body.count))
        if request.method != "HEAD" { bytes += response.body }
        wroteCompletely = connection.write(bytes)
    }

    /// Sends the head of a response whose body follows in parts: chunked for HTTP/1.1 clients
    /// (the connection stays usable), delimited by closing for HTTP/1.0 ones.
    public func beginStream(status: Int = 200, headers: [(name: String, value: String)]) throws(ExchangeInterruption) {
        precondition(!hasResponded, "one response per request")
        hasResponded = true
        let framing: HTTPResponse.Framing = request.version == .http1_1 ? .chunked : .untilClose
        streamFraming = framing
        if case .chunked = framing { keepAliveAfterResponse = request.keepAlive && connection.acceptsMoreRequests }
        try send(HTTPResponse(status: status, headers: headers).head(keepAlive: keepAliveAfterResponse, framing: framing))
    }

    /// Sends one part of the body at once (one server-sent event, say).
    public func sendStreamPart(_ bytes: [UInt8]) throws(ExchangeInterruption) {
        guard let streamFraming, !bytes.isEmpty else { return }
        if case .chunked = streamFraming {
            try send(ChunkedEncoding.chunk(bytes))
        } else {
            try send(bytes)
        }
    }

    public func endStream() {
        if case .chunked = streamFraming { try? send(ChunkedEncoding.end) }
    }

    private func send(_ bytes: [UInt8]) throws(ExchangeInterruption) {
        guard wroteCompletely, connection.write(bytes) else {
            wroteCompletely = false
            throw connection.signals.cancelling.isSignalled ? .serverStopping : .clientGone
        }
    }

    /// Follows `stream` from this connection's thread while watching the client: see
    /// `StreamFollower`.
    public func follow<Element: Sendable>(_ stream: AsyncThrowingStream<Element, any Error>) throws -> StreamFollower<Element> {
        try StreamFollower(stream, connection: connection)
    }
}

/// Elements of an async stream, delivered to a connection thread. A task consumes the stream and
/// posts each element to a mailbox; `next` waits on the mailbox, the client's socket and the
/// server's cancel signal at once. When the client leaves (or the server cancels), the task is
/// cancelled, which ends the stream's iteration and runs its `onTermination`: a producer that
/// stops there stops within one element of the client leaving. "Left" means the connection was
/// closed or reset, or the client shut down its sending side (HTTP clients do not half-close
/// while they wait for a response), or a write stalled for the write timeout.
public final class StreamFollower<Element: Sendable> {
    private let mailbox: Mailbox<Element>
    private let task: Task<Void, Never>
    private let connection: HTTPConnection
    private var received: [Mailbox<Element>.Item] = []
    private var ended = false

    fileprivate init(_ stream: AsyncThrowingStream<Element, any Error>, connection: HTTPConnection) throws {
        let mailbox = try Mailbox<Element>()
        self.mailbox = mailbox
        self.connection = connection
        task = Task {
            do {
                for try await element in stream { mailbox.post(.element(element)) }
                mailbox.post(.end)
            } catch {
                mailbox.post(.failure(error))
            }
        }
    }

    deinit { task.cancel() }

    /// Stops following: the stream's consumer is cancelled.
    public func cancel() {
        task.cancel()
        ended = true
    }

    /// The next element, nil at the end of the stream. Throws the stream's error, or an
    /// `ExchangeInterruption` after cancelling the stream.
    public func next() throws -> Element? {
        while !ended {
            if received.isEmpty { received = mailbox.takeAll() }
            if !received.isEmpty {
                switch received.removeFirst() {
                case .element(let element): return element
                case .end: ended = true; return nil
                case .failure(let error): ended = true; throw error
                }
            }
            let wakers = [mailbox.signal, connection.signals.cancelling]
            switch waitForEvents(connection.descriptor, connection.incomingEvents, wakers: wakers, deadline: nil) {
            case .woken(0), .timedOut:
                continue
            case .woken:
                cancel()
                throw ExchangeInterruption.serverStopping
            case .ready(let events):
                let hangUp = events & (pollPeerClosed | Int16(POLLHUP | POLLERR)) != 0
                if hangUp || !connection.absorbIncoming() {
                    cancel()
                    throw ExchangeInterruption.clientGone
                }
            }
        }
        return nil
    }
}

/// Elements posted from any thread, taken by one; posting wakes the taker's poll.
final class Mailbox<Element: Sendable>: Sendable {
    enum Item: Sendable {
        case element(Element)
        case end
        case failure(any Error)
    }

    let signal: WakeSignal
    private let items = Mutex<[Item]>([])

    init() throws { signal = try WakeSignal() }

    func post(_ item: Item) {
        items.withLock { $0.append(item) }
        signal.signal()
    }

    /// Everything posted so far. The signal is lowered first, so a post racing with this call
    /// leaves it raised and the next wait returns at once.
    func takeAll() -> [Item] {
        signal.reset()
        return items.withLock { items in
            defer { items.removeAll() }
            return items
        }
    }
}
