import CEmberKernels
import Foundation

/// One OpenCL platform (a driver), as the library reports it.
public struct OpenCLPlatformInfo: Sendable {
    public let name: String
    public let vendor: String
    public let version: String
}

/// One OpenCL device and what Ember needs to know about it.
public struct OpenCLDeviceInfo: @unchecked Sendable {
    public enum Kind: String, Sendable {
        case gpu = "GPU", cpu = "CPU", accelerator = "accelerator", other = "other"
    }

    /// Position in `OpenCLSystem.devices` (GPUs first): what `--device N` picks.
    public internal(set) var index: Int
    public let platform: OpenCLPlatformInfo
    public let name: String
    public let vendor: String
    public let kind: Kind
    public let version: String
    public let driverVersion: String
    /// Bytes of device memory the driver reports (PoCL on the CPU reports a share of host RAM).
    public let globalMemoryBytes: Int
    /// Bytes of the largest single buffer.
    public let maxAllocationBytes: Int
    public let computeUnits: Int
    public let maxWorkGroupSize: Int
    public let localMemoryBytes: Int
    /// Whether float division is correctly rounded on request (as on the CPU), which makes the
    /// device's activation quantization match the CPU's bit for bit.
    public let correctlyRoundedDivision: Bool

    let platformID: OpaquePointer
    let deviceID: OpaquePointer
}

/// The platforms and devices of a loaded OpenCL library, GPUs listed first.
public struct OpenCLSystem: @unchecked Sendable {
    public let library: OpenCLLibrary
    public let platforms: [OpenCLPlatformInfo]
    public let devices: [OpenCLDeviceInfo]

    /// What OpenCL offers here, or why it cannot be used (no library, no platform, no device).
    /// Never throws: callers run on the CPU when it is unavailable.
    public static func discover(libraryPath: String = OpenCLLibrary.defaultPath) -> Result<OpenCLSystem, OpenCLUnavailable> {
        switch OpenCLLibrary.load(path: libraryPath) {
        case let .failure(unavailable): return .failure(unavailable)
        case let .success(library):
            do {
                return try discover(library)
            } catch {
                return .failure(OpenCLUnavailable(reason: "\(error)"))
            }
        }
    }

    private static func discover(_ library: OpenCLLibrary) throws -> Result<OpenCLSystem, OpenCLUnavailable> {
        let api = library.api
        var platformCount: UInt32 = 0
        let status = api.clGetPlatformIDs(0, nil, &platformCount)
        // The ICD loader says "platform not found" when no driver is installed.
        if status == -1001 || (status == 0 && platformCount == 0) {
            return .failure(OpenCLUnavailable(reason: "no OpenCL platform is installed (\(library.path) found no driver)"))
        }
        try OpenCLError.check(status, "clGetPlatformIDs")
        var platformIDs = [OpaquePointer?](repeating: nil, count: Int(platformCount))
        try OpenCLError.check(api.clGetPlatformIDs(platformCount, &platformIDs, nil), "clGetPlatformIDs")

        var platforms: [OpenCLPlatformInfo] = []
        var found: [(info: OpenCLPlatformInfo, platform: OpaquePointer, device: OpaquePointer)] = []
        for case let platformID? in platformIDs {
            let platform = OpenCLPlatformInfo(
                name: try platformString(api, platformID, Int(EMBER_CL_PLATFORM_NAME)),
                vendor: try platformString(api, platformID, Int(EMBER_CL_PLATFORM_VENDOR)),
                version: try platformString(api, platformID, Int(EMBER_CL_PLATFORM_VERSION)))
            platforms.append(platform)
            var deviceCount: UInt32 = 0
            let status = api.clGetDeviceIDs(platformID, UInt64(EMBER_CL_DEVICE_TYPE_ALL), 0, nil, &deviceCount)
            if status == Int32(EMBER_CL_DEVICE_NOT_FOUND) || deviceCount == 0 { continue }
            try OpenCLError.check(status, "clGetDeviceIDs")
            var deviceIDs = [OpaquePointer?](repeating: nil, count: Int(deviceCount))
            try OpenCLError.check(api.clGetDeviceIDs(platformID, UInt64(EMBER_CL_DEVICE_TYPE_ALL), deviceCount, &deviceIDs, nil),
                                  "clGetDeviceIDs")
            for case let deviceID? in deviceIDs { found.append((platform, platformID, deviceID)) }
        }
        guard !found.isEmpty else {
            let names = platforms.map(\.name).joined(separator: ", ")
            return .failure(OpenCLUnavailable(reason: "no OpenCL device on platform(s) \(names)"))
        }

        let described = try found.map { try describe(api, $0.device, platform: $0.info, platformID: $0.platform) }
        // GPUs first, then the rest, each group in the drivers' order.
        var devices = described.filter { $0.kind == .gpu } + described.filter { $0.kind != .gpu }
        for i in devices.indices { devices[i].index = i }
        return .success(OpenCLSystem(library: library, platforms: platforms, devices: devices))
    }

    private static func describe(_ api: ember_opencl_api, _ device: OpaquePointer, platform: OpenCLPlatformInfo,
                                 platformID: OpaquePointer) throws -> OpenCLDeviceInfo {
        let type: UInt64 = try deviceValue(api, device, Int(EMBER_CL_DEVICE_TYPE))
        let kind: OpenCLDeviceInfo.Kind = type & UInt64(EMBER_CL_DEVICE_TYPE_GPU) != 0 ? .gpu
            : type & UInt64(EMBER_CL_DEVICE_TYPE_CPU) != 0 ? .cpu
            : type & UInt64(EMBER_CL_DEVICE_TYPE_ACCELERATOR) != 0 ? .accelerator : .other
        let floatConfig: UInt64 = try deviceValue(api, device, Int(EMBER_CL_DEVICE_SINGLE_FP_CONFIG))
        return OpenCLDeviceInfo(
            index: 0, platform: platform,
            name: try deviceString(api, device, Int(EMBER_CL_DEVICE_NAME)),
            vendor: try deviceString(api, device, Int(EMBER_CL_DEVICE_VENDOR)),
            kind: kind,
            version: try deviceString(api, device, Int(EMBER_CL_DEVICE_VERSION)),
            driverVersion: try deviceString(api, device, Int(EMBER_CL_DRIVER_VERSION)),
            globalMemoryBytes: Int(clamping: try deviceValue(api, device, Int(EMBER_CL_DEVICE_GLOBAL_MEM_SIZE)) as UInt64),
            maxAllocationBytes: Int(clamping: try deviceValue(api, device, Int(EMBER_CL_DEVICE_MAX_MEM_ALLOC_SIZE)) as UInt64),
            computeUnits: Int(try deviceValue(api, device, Int(EMBER_CL_DEVICE_MAX_COMPUTE_UNITS)) as UInt32),
            maxWorkGroupSize: Int(try deviceValue(api, device, Int(EMBER_CL_DEVICE_MAX_WORK_GROUP_SIZE)) as Int),
            localMemoryBytes: Int(clamping: try deviceValue(api, device, Int(EMBER_CL_DEVICE_LOCAL_MEM_SIZE)) as UInt64),
            correctlyRoundedDivision: floatConfig & UInt64(EMBER_CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) != 0,
            platformID: platformID, deviceID: device)
    }

    /// The device `choice` selects, or why Ember runs on the CPU instead. Throws only for an
    /// index outside the device list.
    public func select(_ choice: DeviceChoice) throws -> Result<OpenCLDeviceInfo, OpenCLUnavailable> {
        switch choice {
        case .off: return .failure(OpenCLUnavailable(reason: "turned off"))
        case .automatic: return .success(devices[0])
        case let .index(i):
            guard devices.indices.contains(i) else { throw OpenCLError.noSuchDevice(index: i, count: devices.count) }
            return .success(devices[i])
        }
    }
}

// Info queries: strings are asked for their size first; scalars have the size of their type.

private func platformString(_ api: ember_opencl_api, _ platform: OpaquePointer, _ param: Int) throws -> String {
    try infoString("clGetPlatformInfo") { api.clGetPlatformInfo(platform, UInt32(param), $0, $1, $2) }
}

private func deviceString(_ api: ember_opencl_api, _ device: OpaquePointer, _ param: Int) throws -> String {
    try infoString("clGetDeviceInfo") { api.clGetDeviceInfo(device, UInt32(param), $0, $1, $2) }
}

/// A string from an info query `get(size, buffer, sizeOut)`: its size first, then its bytes.
private func infoString(_ call: String, _ get: (Int, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int>?) -> Int32) throws -> String {
    var size = 0
    try OpenCLError.check(get(0, nil, &size), call)
    var bytes = [CChar](repeating: 0, count: size + 1)
    try OpenCLError.check(bytes.withUnsafeMutableBytes { get(size, $0.baseAddress, nil) }, call)
    return String(nulTerminated: bytes).trimmingCharacters(in: .whitespaces)
}

private func deviceValue<T: FixedWidthInteger>(_ api: ember_opencl_api, _ device: OpaquePointer, _ param: Int) throws -> T {
    var value: T = 0
    try OpenCLError.check(api.clGetDeviceInfo(device, UInt32(param), MemoryLayout<T>.size, &value, nil), "clGetDeviceInfo")
    return value
}
