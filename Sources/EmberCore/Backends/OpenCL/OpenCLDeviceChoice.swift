/// Which OpenCL device Ember uses: the first in the list (GPUs come first), one by index, or
/// none. From `--gpu on|off`, `--device N` and the environment variable EMBER_OPENCL_DEVICE.
public enum OpenCLDeviceChoice: Equatable, Sendable {
    case automatic
    case index(Int)
    case off

    public static let environmentVariable = "EMBER_OPENCL_DEVICE"

    /// The choice made by the flags (nil when not given); `--device` wins over the environment,
    /// and `--gpu off` over both.
    public static func parse(gpu: String?, device: String?, environment: [String: String]) throws -> OpenCLDeviceChoice {
        switch gpu {
        case nil, "on", "auto": break
        case "off": return .off
        case let value?: throw OpenCLError.invalidArgument("--gpu must be on or off, not \"\(value)\"")
        }
        if let device {
            guard let i = Int(device), i >= 0 else {
                throw OpenCLError.invalidArgument("--device must be a device number from ember devices, not \"\(device)\"")
            }
            return .index(i)
        }
        if let value = environment[environmentVariable], !value.isEmpty {
            guard let i = Int(value), i >= 0 else {
                throw OpenCLError.invalidArgument("\(environmentVariable) must be a device number from ember devices, not \"\(value)\"")
            }
            return .index(i)
        }
        return .automatic
    }
}
