import CEmberKernels
import Foundation

/// The OpenCL library, opened at run time with dlopen: the table of functions Ember calls.
/// Loading never fails loudly: a missing library or function is a reason string, and Ember
/// runs on the CPU.
public final class OpenCLLibrary: @unchecked Sendable {
    /// The ICD loader's name on Linux: it dispatches to every installed driver.
    public static let defaultPath = "libOpenCL.so.1"
    /// Environment variable naming another library to load (a driver's own, or a test's).
    public static let environmentVariable = "EMBER_OPENCL_LIBRARY"

    /// The library path the environment asks for, else the default.
    public static func path(environment: [String: String]) -> String {
        environment[environmentVariable].flatMap { $0.isEmpty ? nil : $0 } ?? defaultPath
    }

    public let path: String
    let api: ember_opencl_api

    private init(path: String, api: ember_opencl_api) {
        self.path = path
        self.api = api
    }

    // One load per path for the process: the library is never unloaded anyway.
    private static let cache = NSLock()
    nonisolated(unsafe) private static var loaded: [String: Result<OpenCLLibrary, OpenCLUnavailable>] = [:]

    /// The library at `path`, or why it cannot be used.
    public static func load(path: String = defaultPath) -> Result<OpenCLLibrary, OpenCLUnavailable> {
        cache.lock()
        defer { cache.unlock() }
        if let result = loaded[path] { return result }
        var api = ember_opencl_api()
        var reason = [CChar](repeating: 0, count: 512)
        let result: Result<OpenCLLibrary, OpenCLUnavailable>
        if ember_opencl_load(path, &api, &reason, reason.count) == 0 {
            result = .success(OpenCLLibrary(path: path, api: api))
        } else {
            result = .failure(OpenCLUnavailable(reason: String(nulTerminated: reason)))
        }
        loaded[path] = result
        return result
    }
}

/// Why the OpenCL backend cannot run: no library, no platform, no device, or turned off.
public struct OpenCLUnavailable: Error, CustomStringConvertible, Equatable, Sendable {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "OpenCL unavailable: \(reason)" }
}

extension String {
    /// The text of a C buffer up to its first NUL (all of it when there is none).
    init(nulTerminated bytes: [CChar]) {
        self.init(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension OpenCLUnavailable: LocalizedError {
    public var errorDescription: String? { description }
}
