#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory. Tensor data is read in place, never copied.
final class MappedFile: @unchecked Sendable {
    let path: String
    let bytes: UnsafeRawBufferPointer
    /// The whole anonymous mapping (guard page included) when the bytes did not come from a file.
    private let anonymous: (address: UnsafeMutableRawPointer, length: Int)?

    /// Maps the regular file at `path`. Anything else (a FIFO, a device, a directory) is refused
    /// before it can block: the path is checked first, then opened without blocking (so a FIFO
    /// swapped in between cannot hang the open either) and checked again on the descriptor.
    init(path: String) throws {
        self.path = path
        anonymous = nil
        func failure(_ reason: String) -> GGUFError { .cannotOpen(path: path, reason: reason) }
        var info = stat()
        guard stat(path, &info) == 0 else { throw failure(String(cString: strerror(errno))) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw failure(Self.notRegular(info.st_mode)) }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw failure(String(cString: strerror(errno))) }
        defer { close(fd) }
        guard fstat(fd, &info) == 0 else { throw failure(String(cString: strerror(errno))) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw failure(Self.notRegular(info.st_mode)) }
        let size = Int(info.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let address, address != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: path, reason: "mmap failed: " + String(cString: strerror(errno)))
        }
        bytes = UnsafeRawBufferPointer(start: address, count: size)
    }

    /// Bytes held in anonymous read-only memory, as if mapped from a file named `path`: lets
    /// tests and fuzzers feed thousands of variants to the parser without touching the disk.
    /// The bytes end within 64 bytes of an inaccessible guard page (their start 64-byte aligned,
    /// as a mapping's would be), so a read past the end faults instead of passing unnoticed.
    init(bytes source: [UInt8], path: String) throws {
        self.path = path
        guard !source.isEmpty else {
            anonymous = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let dataPages = (source.count + page - 1) / page * page
        let length = dataPages + page
        let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let address, address != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: path, reason: "mmap failed: " + String(cString: strerror(errno)))
        }
        let start = address + (dataPages - source.count) / 64 * 64
        source.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: source.count) }
        mprotect(address, dataPages, PROT_READ)
        mprotect(address + dataPages, page, PROT_NONE)
        anonymous = (address, length)
        bytes = UnsafeRawBufferPointer(start: start, count: source.count)
    }

    /// Why a file of mode `mode` is refused, naming what it is.
    static func notRegular(_ mode: mode_t) -> String {
        let kind: String
        switch mode & S_IFMT {
        case S_IFIFO: kind = "a FIFO"
        case S_IFDIR: kind = "a directory"
        case S_IFCHR: kind = "a character device"
        case S_IFBLK: kind = "a block device"
        case S_IFSOCK: kind = "a socket"
        default: kind = "not a plain file"
        }
        return "not a regular file (it is \(kind))"
    }

    /// Asks the kernel to read the given range ahead (weights are read soon and in full).
    func adviseWillNeed(offset: Int = 0, count: Int? = nil) {
        guard let base = bytes.baseAddress else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        let end = min(bytes.count, offset + (count ?? bytes.count - offset))
        guard end > start else { return }
        madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_WILLNEED)
    }

    deinit {
        if let (address, length) = anonymous {
            munmap(address, length)
        } else if let base = bytes.baseAddress {
            munmap(UnsafeMutableRawPointer(mutating: base), bytes.count)
        }
    }
}
