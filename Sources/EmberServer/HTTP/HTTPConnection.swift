import Glibc

/// One client connection, served on its own thread from accept to close: read a request, hand it
/// to the handler, repeat while the connection is kept alive. Pipelined requests wait in the
/// parser's buffer and are answered in order, because one request is handled at a time.
final class HTTPConnection {
    let descriptor: Int32
    let configuration: HTTPServerConfiguration
    let handler: any HTTPHandler
    let signals: ShutdownSignals
    var parser: HTTPRequestParser
    private var readBuffer = [UInt8](repeating: 0, count: 16 * 1024)

    init(descriptor: Int32, configuration: HTTPServerConfiguration, handler: any HTTPHandler, signals: ShutdownSignals) {
        self.descriptor = descriptor
        self.configuration = configuration
        self.handler = handler
        self.signals = signals
        parser = HTTPRequestParser(limits: configuration.limits)
    }

    func run() {
        defer { close(descriptor) }
        while let request = readRequest() {
            let exchange = HTTPExchange(request: request, connection: self)
            handler.handle(exchange)
            if !exchange.hasResponded {
                exchange.respond(handler.errorResponse(status: 500, message: "the handler gave no response"))
            }
            guard exchange.keepsConnection else {
                if exchange.wroteCompletely { lingeringClose() }
                return
            }
        }
    }

    /// Whether a completed exchange may be followed by another on this connection.
    var acceptsMoreRequests: Bool { !signals.isDraining }

    // MARK: reading

    private enum ReadStep {
        case more
        case closed
        case timedOut
    }

    /// The next request, or nil when the connection should close (the client left, was idle
    /// too long, sent something unreadable (answered here), or the server is stopping).
    private func readRequest() -> HTTPRequest? {
        let now = ContinuousClock.now
        var idleDeadline: ContinuousClock.Instant? = now + configuration.idleTimeout
        var headDeadline: ContinuousClock.Instant?
        var bodyDeadline: ContinuousClock.Instant?
        if parser.isMidRequest { headDeadline = now + configuration.headerTimeout }
        while true {
            do {
                if let request = try parser.nextRequest() { return request }
            } catch {
                refuse(status: error.statusCode, message: error.message)
                return nil
            }
            if parser.awaitsContinue {
                guard write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return nil }
                parser.markContinueAnswered()
            }
            if parser.isMidRequest {
                idleDeadline = nil
                if headDeadline == nil { headDeadline = .now + configuration.headerTimeout }
                if parser.isHeadComplete, bodyDeadline == nil { bodyDeadline = .now + configuration.bodyTimeout }
            } else if signals.isDraining {
                return nil  // idle while stopping: nothing is lost by closing
            }
            switch readMore(deadline: bodyDeadline ?? headDeadline ?? idleDeadline) {
            case .more:
                continue
            case .closed:
                return nil
            case .timedOut:
                if parser.isMidRequest { refuse(status: 408, message: "the request took too long to arrive") }
                return nil
            }
        }
    }

    private func readMore(deadline: ContinuousClock.Instant?) -> ReadStep {
        let wakers = signals.isDraining ? [signals.cancelling] : [signals.cancelling, signals.draining]
        while true {
            switch SocketIO.read(descriptor, into: &readBuffer) {
            case .bytes(let bytes):
                parser.append(bytes)
                return .more
            case .closed:
                return .closed
            case .wouldBlock:
                break
            }
            switch waitForEvents(descriptor, Int16(POLLIN), wakers: wakers, deadline: deadline) {
            case .ready:
                continue
            case .woken(let index):
                if wakers[index] === signals.cancelling { return .closed }
                // Draining began: an idle connection closes, one mid-request reads on.
                return parser.isMidRequest ? readMore(deadline: deadline) : .closed
            case .timedOut:
                return .timedOut
            }
        }
    }

    /// Reads whatever the client has sent while a response is under way (the next pipelined
    /// request, or the end of the connection). False once the client has gone.
    func absorbIncoming() -> Bool {
        while parser.bufferedByteCount < configuration.limits.maxHeaderBytes + configuration.limits.maxBodyBytes {
            switch SocketIO.read(descriptor, into: &readBuffer) {
            case .bytes(let bytes): parser.append(bytes)
            case .wouldBlock: return true
            case .closed: return false
            }
        }
        return true
    }

    /// Poll events that say the client is still there to read or has gone, for waits that
    /// happen while a response is produced. POLLIN only while the parser may buffer more.
    var incomingEvents: Int16 {
        let room = parser.bufferedByteCount < configuration.limits.maxHeaderBytes + configuration.limits.maxBodyBytes
        return pollPeerClosed | (room ? Int16(POLLIN) : 0)
    }

    // MARK: writing

    /// Writes all of `bytes` unless the client stops taking them for `writeTimeout`, goes away,
    /// or the server cancels. False when the bytes could not all be written.
    func write(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        var deadline = ContinuousClock.now + configuration.writeTimeout
        while offset < bytes.count {
            guard let sent = SocketIO.send(descriptor, bytes[offset...]) else { return false }
            if sent > 0 {
                offset += sent
                deadline = .now + configuration.writeTimeout
                continue
            }
            switch waitForEvents(descriptor, Int16(POLLOUT), wakers: [signals.cancelling], deadline: deadline) {
            case .ready(let events):
                if events & Int16(POLLERR | POLLHUP) != 0 { return false }
            case .woken, .timedOut:
                return false
            }
        }
        return true
    }

    /// Answers a request the server will not serve, then closes.
    private func refuse(status: Int, message: String) {
        let response = handler.errorResponse(status: status, message: message)
        if write(response.serialized(keepAlive: false)) {
            lingeringClose()
        }
    }

    /// Closing at once while the client is still sending makes the kernel reset the connection,
    /// which can destroy the response before the client reads it. So: end our side, then read and
    /// drop what still comes, for a short while.
    private func lingeringClose() {
        shutdown(descriptor, Int32(SHUT_WR))
        let deadline = ContinuousClock.now + .seconds(2)
        var discarded = 0
        while discarded < 1 << 20 {
            switch SocketIO.read(descriptor, into: &readBuffer) {
            case .bytes(let bytes):
                discarded += bytes.count
                continue
            case .closed:
                return
            case .wouldBlock:
                break
            }
            guard case .ready = waitForEvents(descriptor, Int16(POLLIN), wakers: [signals.cancelling], deadline: deadline) else { return }
        }
    }
}
