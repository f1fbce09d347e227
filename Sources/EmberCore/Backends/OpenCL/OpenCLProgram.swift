import CEmberKernels
import Foundation

/// A program built for one device from OpenCL C source, and its kernels by name.
final class OpenCLProgram: @unchecked Sendable {
    let name: String
    let handle: OpaquePointer
    private let device: OpenCLDevice

    /// Compiles `source` for `device`. A compile error throws `buildFailed` with the build log.
    init(source: String, name: String, device: OpenCLDevice) throws {
        self.name = name
        self.device = device
        let api = device.library.api
        var status: Int32 = 0
        let program: OpaquePointer? = source.withCString { text in
            var strings: [UnsafePointer<CChar>?] = [text]
            return api.clCreateProgramWithSource(device.context, 1, &strings, nil, &status)
        }
        guard let program, status == 0 else { throw OpenCLError.call("clCreateProgramWithSource(\(name))", status: status) }
        handle = program
        // Correctly rounded division where offered: the activation quantizers divide, and the
        // CPU's quotients are correctly rounded.
        let options = "-cl-std=CL1.2" + (device.info.correctlyRoundedDivision ? " -cl-fp32-correctly-rounded-divide-sqrt" : "")
        var deviceID: OpaquePointer? = device.info.deviceID
        let built = api.clBuildProgram(program, 1, &deviceID, options, nil, nil)
        if built != 0 {
            throw OpenCLError.buildFailed(program: name, log: (try? buildLog()) ?? "(no build log) status \(built)")
        }
    }

    deinit { _ = device.library.api.clReleaseProgram(handle) }

    private func buildLog() throws -> String {
        let api = device.library.api
        var size = 0
        let param = UInt32(EMBER_CL_PROGRAM_BUILD_LOG)
        try OpenCLError.check(api.clGetProgramBuildInfo(handle, device.info.deviceID, param, 0, nil, &size), "clGetProgramBuildInfo")
        var bytes = [CChar](repeating: 0, count: size + 1)
        try OpenCLError.check(api.clGetProgramBuildInfo(handle, device.info.deviceID, param, size, &bytes, nil),
                              "clGetProgramBuildInfo")
        return String(nulTerminated: bytes)
    }

    /// The kernel `name` of this program.
    func kernel(_ name: String) throws -> OpenCLKernel {
        try OpenCLKernel(program: self, name: name)
    }

    var library: OpenCLLibrary { device.library }
}

/// One kernel of a program, with its arguments set by position before each launch.
/// Not for concurrent use: arguments belong to the kernel object.
final class OpenCLKernel: @unchecked Sendable {
    enum Argument {
        case buffer(OpenCLBuffer)
        case int32(Int32)
        case uint64(UInt64)
        case float(Float)
    }

    let name: String
    let handle: OpaquePointer
    private let program: OpenCLProgram

    init(program: OpenCLProgram, name: String) throws {
        var status: Int32 = 0
        guard let kernel = program.library.api.clCreateKernel(program.handle, name, &status), status == 0 else {
            throw OpenCLError.call("clCreateKernel(\(name))", status: status)
        }
        self.name = name
        self.program = program
        handle = kernel
    }

    deinit { _ = program.library.api.clReleaseKernel(handle) }

    /// Sets arguments 0, 1, ... in order.
    func setArguments(_ arguments: [Argument]) throws {
        let api = program.library.api
        for (index, argument) in arguments.enumerated() {
            let status: Int32
            switch argument {
            case let .buffer(buffer):
                var memory: OpaquePointer? = buffer.memory
                status = api.clSetKernelArg(handle, UInt32(index), MemoryLayout<OpaquePointer>.size, &memory)
            case var .int32(value): status = api.clSetKernelArg(handle, UInt32(index), 4, &value)
            case var .uint64(value): status = api.clSetKernelArg(handle, UInt32(index), 8, &value)
            case var .float(value): status = api.clSetKernelArg(handle, UInt32(index), 4, &value)
            }
            try OpenCLError.check(status, "clSetKernelArg(\(name), \(index))")
        }
    }
}

/// A program's kernels by name, each made on first use and then reused, for a device that
/// must run work-groups of `groupSize` items.
final class OpenCLKernelSet {
    private let program: OpenCLProgram
    private var kernels: [String: OpenCLKernel] = [:]

    init(source: String, name: String, groupSize: Int, device: OpenCLDevice) throws {
        guard device.info.maxWorkGroupSize >= groupSize else {
            throw OpenCLError.invalidArgument("OpenCL device \(device.info.name) runs work-groups of at most "
                                              + "\(device.info.maxWorkGroupSize) items; Ember's \(name) need \(groupSize)")
        }
        program = try OpenCLProgram(source: source, name: name, device: device)
    }

    func kernel(_ name: String) throws -> OpenCLKernel {
        if let k = kernels[name] { return k }
        let k = try program.kernel(name)
        kernels[name] = k
        return k
    }
}
