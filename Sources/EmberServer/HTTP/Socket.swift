import Glibc

// POSIX sockets for the server: a listener, a connection's reads and writes with deadlines, and
// an eventfd that wakes threads blocked in poll. Every wait goes through `waitForEvents`, so no
// read or write can block past a deadline or miss a shutdown signal.

struct SocketError: Error, CustomStringConvertible {
    let operation: String
    let code: Int32

    init(_ operation: String, code: Int32 = errno) {
        self.operation = operation
        self.code = code
    }

    var description: String { "\(operation): \(String(cString: strerror(code)))" }
}

/// A self-pipe: signalled from any thread, readable until reset, so a thread in poll wakes.
/// (A pipe rather than an eventfd: Glibc's Swift module leaves the GNU extensions out.)
/// Sendable because its only state is two immutable descriptors; pipe writes are atomic syscalls.
final class WakeSignal: Sendable {
    /// The end to poll for reading.
    let descriptor: Int32
    private let writeEnd: Int32

    init() throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw SocketError("pipe") }
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        descriptor = ends[0]
        writeEnd = ends[1]
    }

    deinit {
        close(descriptor)
        close(writeEnd)
    }

    /// Raises the signal (a full pipe is raised already, so a failed write loses nothing).
    func signal() {
        var byte: UInt8 = 1
        _ = write(writeEnd, &byte, 1)
    }

    func reset() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while read(descriptor, &bytes, bytes.count) > 0 {}
    }

    var isSignalled: Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }
}

/// POLLRDHUP (Linux, asm-generic/poll.h): the peer closed its sending side. Glibc's Swift module
/// leaves it out with the other GNU extensions.
let pollPeerClosed = Int16(0x2000)

/// What ended a wait.
enum WaitOutcome: Equatable {
    /// The socket reported these poll events.
    case ready(Int16)
    /// The waker at this index in the list was signalled.
    case woken(Int)
    case timedOut
}

/// Waits until `descriptor` has one of `events`, a waker is signalled, or `deadline` passes.
func waitForEvents(_ descriptor: Int32, _ events: Int16, wakers: [WakeSignal], deadline: ContinuousClock.Instant?) -> WaitOutcome {
    var entries = [pollfd(fd: descriptor, events: events, revents: 0)]
    entries += wakers.map { pollfd(fd: $0.descriptor, events: Int16(POLLIN), revents: 0) }
    while true {
        var timeout: Int32 = -1
        if let deadline {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return .timedOut }
            let (seconds, attoseconds) = remaining.components
            timeout = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
        }
        let count = poll(&entries, nfds_t(entries.count), timeout)
        if count < 0 {
            if errno == EINTR { continue }
            return .ready(Int16(POLLERR))
        }
        if count == 0 { continue }  // re-check the deadline: poll may return a little early
        for index in 1..<entries.count where entries[index].revents != 0 { return .woken(index - 1) }
        return .ready(entries[0].revents)
    }
}

/// A listening TCP socket.
final class TCPListener: Sendable {
    let descriptor: Int32
    let port: Int

    init(host: String, port: Int, backlog: Int32 = 128) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            throw SocketError("resolve \(host)", code: status == EAI_SYSTEM ? errno : EINVAL)
        }
        defer { freeaddrinfo(list) }

        let socketType = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(first.pointee.ai_family, socketType, 0)
        guard fd >= 0 else { throw SocketError("socket") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let error = SocketError("bind \(host):\(port)")
            Glibc.close(fd)
            throw error
        }
        guard listen(fd, backlog) == 0 else {
            let error = SocketError("listen")
            Glibc.close(fd)
            throw error
        }
        descriptor = fd
        self.port = Self.boundPort(fd) ?? port
    }

    /// Stops listening; called once, by the accept thread as it ends.
    func close() { Glibc.close(descriptor) }

    /// A new connection (non-blocking, Nagle off so each streamed event leaves at once), nil when
    /// none is pending.
    func accept() throws -> Int32? {
        let fd = Glibc.accept(descriptor, nil, nil)
        if fd < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED { return nil }
            throw SocketError("accept")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var yes: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &yes, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    private static func boundPort(_ fd: Int32) -> Int? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) } }
        default:
            return nil
        }
    }
}

/// Non-blocking reads and writes on a connected socket.
enum SocketIO {
    enum ReadResult {
        case bytes(ArraySlice<UInt8>)
        /// Nothing to read right now.
        case wouldBlock
        /// The peer closed its side, or the connection failed.
        case closed
    }

    static func read(_ fd: Int32, into buffer: inout [UInt8]) -> ReadResult {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count > 0 { return .bytes(buffer[0..<count]) }
        if count < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return .wouldBlock }
        return .closed
    }

    /// Sends what the socket takes now: the count written, 0 when it would block, nil when the
    /// connection is gone. MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
    static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Int? {
        let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if count >= 0 { return count }
        if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return 0 }
        return nil
    }
}
