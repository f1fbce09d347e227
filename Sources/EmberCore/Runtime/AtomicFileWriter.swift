import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why an output file cannot be written. Each case names the path and says what to do.
public enum OutputFileError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The path exists and is not a regular file (a device, FIFO, directory, socket or a
    /// symbolic link): replacing it could destroy something that is not Ember's output.
    case notARegularFile(path: String, kind: String)
    case noDirectory(path: String, directory: String)
    case directoryNotWritable(path: String, directory: String, reason: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case .notARegularFile(let path, let kind):
            return "\(path): is \(kind), not a regular file; refusing to replace it (choose another output path)"
        case .noDirectory(let path, let directory):
            return "\(path): \(directory) is not an existing directory"
        case .directoryNotWritable(let path, let directory, let reason):
            return "\(path): cannot create files in \(directory): \(reason)"
        case .writeFailed(let path, let reason):
            return "\(path): cannot write: \(reason)"
        }
    }

    public var errorDescription: String? { description }
}

/// Writes a file so that it appears whole or not at all: the bytes go to a temporary file in
/// the target's directory, are flushed to disk, and only then renamed over the target. Any
/// failure (a full disk, a write error, an interrupt) removes the temporary file and leaves an
/// existing target untouched. Only regular files are ever replaced.
///
/// Long jobs call `prepare(_:)` before they start, so a bad output path fails in a second
/// rather than after an hour of work.
public final class AtomicFileWriter {
    public let path: String
    /// The temporary file the bytes go to until `commit`.
    public let temporaryPath: String
    private var fd: Int32
    private var finished = false
    private let cleanup: InterruptCleanup.Registration

    /// Checks that `path` can be written now: its directory exists and is writable, and the
    /// path is either absent or a regular file (symbolic links are refused too: the link, not
    /// its target, would be replaced).
    public static func prepare(_ path: String) throws {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw OutputFileError.notARegularFile(path: path, kind: kind(of: info.st_mode))
            }
        } else if errno != ENOENT, errno != ENOTDIR {
            throw OutputFileError.writeFailed(path: path, reason: String(cString: strerror(errno)))
        }
        let directory = directory(of: path)
        guard stat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw OutputFileError.noDirectory(path: path, directory: directory)
        }
        guard access(directory, W_OK | X_OK) == 0 else {
            throw OutputFileError.directoryNotWritable(path: path, directory: directory, reason: String(cString: strerror(errno)))
        }
    }

    /// Opens a temporary file beside `path` (after `prepare`'s checks).
    public init(path: String) throws {
        try Self.prepare(path)
        self.path = path
        temporaryPath = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // Keep the permissions of a file being replaced; new files get 0666 less the umask.
        var info = stat()
        let mode: mode_t = lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0o666
        cleanup = InterruptCleanup.register(temporaryPath)
        fd = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            InterruptCleanup.unregister(cleanup)
            throw OutputFileError.writeFailed(path: path, reason: reason)
        }
        if mode != 0o666 { fchmod(fd, mode) }
    }

    /// Appends `bytes`, however many `write` calls that takes.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "write after commit or discard")
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw failure(errno)
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Flushes the bytes to disk and renames the temporary file over `path`. The target is
    /// checked again first: something other than a regular file may have appeared meanwhile.
    public func commit() throws {
        precondition(!finished, "commit after commit or discard")
        defer { discard() }
        guard fsync(fd) == 0 else { throw failure(errno) }
        let closed = close(fd)
        fd = -1
        guard closed == 0 else { throw failure(errno) }
        var info = stat()
        if lstat(path, &info) == 0, info.st_mode & S_IFMT != S_IFREG {
            throw OutputFileError.notARegularFile(path: path, kind: Self.kind(of: info.st_mode))
        }
        guard rename(temporaryPath, path) == 0 else { throw failure(errno) }
        finished = true
        InterruptCleanup.unregister(cleanup)
        // Make the rename itself durable; a failure here leaves a complete file, so it is ignored.
        let directory = open(Self.directory(of: path), O_RDONLY | O_CLOEXEC)
        if directory >= 0 {
            _ = fsync(directory)
            close(directory)
        }
    }

    /// Abandons the write: the temporary file is removed and the target left as it was.
    public func discard() {
        guard !finished else { return }
        finished = true
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(temporaryPath)
        InterruptCleanup.unregister(cleanup)
    }

    deinit { discard() }

    /// Writes the bytes `body` produces to `path` atomically.
    public static func write(to path: String, _ body: (AtomicFileWriter) throws -> Void) throws {
        let writer = try AtomicFileWriter(path: path)
        do {
            try body(writer)
            try writer.commit()
        } catch {
            writer.discard()
            throw error
        }
    }

    public static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path) { try $0.write(bytes) }
    }

    private func failure(_ code: Int32) -> OutputFileError {
        var reason = String(cString: strerror(code))
        if code == ENOSPC || code == EDQUOT || code == EFBIG {
            reason += " (the file was not written; \(path) is unchanged)"
        }
        return .writeFailed(path: path, reason: reason)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func kind(of mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFLNK: return "a symbolic link"
        case S_IFIFO: return "a FIFO"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "not a plain file"
        }
    }
}
