import EmberCore
import Foundation

/// A mistake on the command line: reported with the usage, exit status 2.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The flags a command accepts, and the values given for them.
///
/// Flags are `--name VALUE`, `--name=VALUE`, `-x VALUE` or bare switches; every flag must be
/// declared, so a typo is an error rather than silently ignored.
struct Arguments {
    struct Flag {
        let names: [String]
        let takesValue: Bool
        let help: String
    }

    private let flags: [Flag]
    private var values: [String: String] = [:]  // keyed by the flag's first name
    private(set) var positional: [String] = []

    init(_ arguments: ArraySlice<String>, flags: [Flag], allowsPositional: Bool = false) throws {
        self.flags = flags
        var rest = arguments
        while let argument = rest.popFirst() {
            if argument == "--" {
                positional += rest
                break
            }
            guard argument.hasPrefix("-"), argument.count > 1, Double(argument) == nil else {
                guard allowsPositional else { throw UsageError("unexpected argument \"\(argument)\"") }
                positional.append(argument)
                continue
            }
            var name = argument
            var inlineValue: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                name = String(argument[..<equals])
                inlineValue = String(argument[argument.index(after: equals)...])
            }
            guard let flag = flags.first(where: { $0.names.contains(name) }) else {
                throw UsageError("unknown flag \(name)")
            }
            let key = flag.names[0]
            guard values[key] == nil else { throw UsageError("\(name) given twice") }
            if flag.takesValue {
                guard let value = inlineValue ?? rest.popFirst() else { throw UsageError("\(name) needs a value") }
                values[key] = value
            } else {
                guard inlineValue == nil else { throw UsageError("\(name) takes no value") }
                values[key] = ""
            }
        }
    }

    func has(_ name: String) -> Bool { values[name] != nil }

    func string(_ name: String) -> String? { values[name] }

    func int(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = values[name] else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw UsageError("\(name) must be an integer in \(range.lowerBound)...\(range.upperBound), not \"\(text)\"")
        }
        return value
    }

    func float(_ name: String, default fallback: Float, range: ClosedRange<Float>) throws -> Float {
        guard let text = values[name] else { return fallback }
        guard let value = Float(text), value.isFinite, range.contains(value) else {
            throw UsageError("\(name) must be a number in \(range.lowerBound)...\(range.upperBound), not \"\(text)\"")
        }
        return value
    }

    /// `--threads`: worker threads, all cores by default.
    /// More threads than cores only wait on each other (the pool's workers spin), so the
    /// count is bounded by four times the cores.
    func threads() throws -> Int {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        guard let text = string("--threads") else { return cores }
        guard let value = Int(text), (1...4 * cores).contains(value) else {
            throw UsageError("--threads must be an integer in 1...\(4 * cores) (this machine has \(cores) cores), not \"\(text)\"")
        }
        return value
    }

    /// `--seed`, when given: a non-negative integer.
    func seed() throws -> UInt64? {
        guard let text = values["--seed"] else { return nil }
        guard let value = UInt64(text) else { throw UsageError("--seed must be a non-negative integer, not \"\(text)\"") }
        return value
    }

    /// Help lines for these flags.
    static func help(_ flags: [Flag]) -> String {
        flags.map { flag in
            let names = flag.names.joined(separator: ", ") + (flag.takesValue ? " VALUE" : "")
            return "  " + names.padding(toLength: max(names.count, 26), withPad: " ", startingAt: 0) + "  " + flag.help
        }.joined(separator: "\n")
    }
}

/// Flags shared by the commands that load a model.
enum CommonFlags {
    static let model = Arguments.Flag(names: ["--model", "-m"], takesValue: true,
                                      help: "GGUF model file (default: SmolLM2-135M-Instruct Q4_1, downloaded once)")
    static let threads = Arguments.Flag(names: ["--threads", "-t"], takesValue: true,
                                        help: "worker threads (default: all cores)")
    static let context = Arguments.Flag(names: ["--ctx", "-c"], takesValue: true,
                                        help: "context length in tokens (default 2048, at most the model's)")
    static let batch = Arguments.Flag(names: ["--batch", "-b"], takesValue: true,
                                      help: "prompt tokens evaluated together (default 64)")
    static let checkTensors = Arguments.Flag(names: ["--check-tensors"], takesValue: false,
                                             help: "scan every weight for NaN and infinities before running")
    static let all = [model, threads, context, batch, checkTensors]
}

/// Flags choosing the OpenCL device (so far used by `ember devices`).
enum DeviceFlags {
    static let gpu = Arguments.Flag(names: ["--gpu"], takesValue: true,
                                    help: "on|off: use an OpenCL device when one is found (default on)")
    static let device = Arguments.Flag(names: ["--device"], takesValue: true,
                                       help: "OpenCL device number from `ember devices` (default 0, or $EMBER_OPENCL_DEVICE)")
    static let all = [gpu, device]
}

extension Arguments {
    /// `--vram-budget` in bytes, nil when not given; a malformed size is a usage error.
    func vramBudget() throws -> Int? {
        try string("--vram-budget").map { text in
            guard let bytes = ByteSize.parse(text) else {
                throw UsageError("--vram-budget must be a size such as 6GiB, 512MiB, 1.5GB or a byte count, not \"\(text)\"")
            }
            return bytes
        }
    }

    /// The OpenCL library EMBER_OPENCL_LIBRARY names, if it names one.
    func openCLLibraryPath() -> String? {
        ProcessInfo.processInfo.environment["EMBER_OPENCL_LIBRARY"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The device `--gpu`, `--device` and EMBER_OPENCL_DEVICE choose; `--device` wins over the
    /// environment, and `--gpu off` over both. A malformed value is a usage error.
    func deviceChoice() throws -> DeviceChoice {
        switch string("--gpu") {
        case nil, "on", "auto": break
        case "off": return .off
        case let value?: throw UsageError("--gpu must be on or off, not \"\(value)\"")
        }
        if let device = string("--device") {
            guard let i = Int(device), i >= 0 else { throw UsageError("--device must be a device number from `ember devices`, not \"\(device)\"") }
            return .index(i)
        }
        let variable = "EMBER_OPENCL_DEVICE"
        if let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty {
            guard let i = Int(value), i >= 0 else { throw UsageError("\(variable) must be a device number from `ember devices`, not \"\(value)\"") }
            return .index(i)
        }
        return .automatic
    }
}
