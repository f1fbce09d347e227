import Foundation

import CEmberKernels

/// Everything that can go wrong on the OpenCL backend, as values: each failed OpenCL call names
/// the call and its status code, and Ember's own checks say which buffer, kernel or budget.
public enum OpenCLError: Error, CustomStringConvertible, Equatable {
    /// An OpenCL call returned a status other than CL_SUCCESS.
    case call(String, status: Int32)
    /// The program did not compile; `log` is the compiler's build log.
    case buildFailed(program: String, log: String)
    /// An allocation would take Ember's accounting past the device's memory budget.
    case budgetExceeded(label: String, requested: Int, inUse: Int, budget: Int)
    /// A memory budget larger than the device's memory was asked for.
    case deviceTooSmall(device: String, requested: Int, available: Int)
    /// One buffer larger than the device allows for a single allocation.
    case allocationTooLarge(label: String, requested: Int, limit: Int)
    /// A device index outside the list `ember devices` prints.
    case noSuchDevice(index: Int, count: Int)
    /// A weight type the device kernels do not handle (for this operation).
    case unsupportedType(matrix: String, type: TensorType, operation: String)
    /// A buffer too small for what an operation reads or writes.
    case bufferTooSmall(label: String, needed: Int, available: Int)
    /// Any other malformed request: what was wrong.
    case invalidArgument(String)

    /// A type the device cannot compute (callers may fall back to the CPU).
    public var isUnsupportedType: Bool {
        if case .unsupportedType = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case let .call(name, status):
            return "\(name) failed: \(OpenCLError.statusName(status)) (\(status))"
        case let .buildFailed(program, log):
            return "OpenCL program \(program) did not build:\n\(log)"
        case let .budgetExceeded(label, requested, inUse, budget):
            return "OpenCL buffer \(label) (\(requested) bytes) exceeds the device memory budget: \(inUse) of \(budget) bytes already in use"
        case let .deviceTooSmall(device, requested, available):
            return "OpenCL device \(device) has \(available) bytes of memory, less than the \(requested) bytes asked for"
        case let .allocationTooLarge(label, requested, limit):
            return "OpenCL buffer \(label) (\(requested) bytes) is larger than the device's largest allocation (\(limit) bytes)"
        case let .noSuchDevice(index, count):
            return "no OpenCL device \(index): \(count) device(s) found (ember devices lists them)"
        case let .unsupportedType(matrix, type, operation):
            return "\(matrix): the OpenCL \(operation) kernels do not handle \(type)"
        case let .bufferTooSmall(label, needed, available):
            return "OpenCL buffer \(label) holds \(available) bytes, \(needed) needed"
        case let .invalidArgument(message):
            return message
        }
    }

    /// The OpenCL name of a status code (OpenCL 1.2's list, plus the ICD loader's).
    static func statusName(_ status: Int32) -> String {
        let names: [Int32: String] = [
            0: "CL_SUCCESS", -1: "CL_DEVICE_NOT_FOUND", -2: "CL_DEVICE_NOT_AVAILABLE",
            -3: "CL_COMPILER_NOT_AVAILABLE", -4: "CL_MEM_OBJECT_ALLOCATION_FAILURE", -5: "CL_OUT_OF_RESOURCES",
            -6: "CL_OUT_OF_HOST_MEMORY", -7: "CL_PROFILING_INFO_NOT_AVAILABLE", -8: "CL_MEM_COPY_OVERLAP",
            -9: "CL_IMAGE_FORMAT_MISMATCH", -10: "CL_IMAGE_FORMAT_NOT_SUPPORTED", -11: "CL_BUILD_PROGRAM_FAILURE",
            -12: "CL_MAP_FAILURE", -13: "CL_MISALIGNED_SUB_BUFFER_OFFSET",
            -14: "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST", -15: "CL_COMPILE_PROGRAM_FAILURE",
            -16: "CL_LINKER_NOT_AVAILABLE", -17: "CL_LINK_PROGRAM_FAILURE", -18: "CL_DEVICE_PARTITION_FAILED",
            -19: "CL_KERNEL_ARG_INFO_NOT_AVAILABLE",
            -30: "CL_INVALID_VALUE", -31: "CL_INVALID_DEVICE_TYPE", -32: "CL_INVALID_PLATFORM",
            -33: "CL_INVALID_DEVICE", -34: "CL_INVALID_CONTEXT", -35: "CL_INVALID_QUEUE_PROPERTIES",
            -36: "CL_INVALID_COMMAND_QUEUE", -37: "CL_INVALID_HOST_PTR", -38: "CL_INVALID_MEM_OBJECT",
            -39: "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR", -40: "CL_INVALID_IMAGE_SIZE", -41: "CL_INVALID_SAMPLER",
            -42: "CL_INVALID_BINARY", -43: "CL_INVALID_BUILD_OPTIONS", -44: "CL_INVALID_PROGRAM",
            -45: "CL_INVALID_PROGRAM_EXECUTABLE", -46: "CL_INVALID_KERNEL_NAME", -47: "CL_INVALID_KERNEL_DEFINITION",
            -48: "CL_INVALID_KERNEL", -49: "CL_INVALID_ARG_INDEX", -50: "CL_INVALID_ARG_VALUE",
            -51: "CL_INVALID_ARG_SIZE", -52: "CL_INVALID_KERNEL_ARGS", -53: "CL_INVALID_WORK_DIMENSION",
            -54: "CL_INVALID_WORK_GROUP_SIZE", -55: "CL_INVALID_WORK_ITEM_SIZE", -56: "CL_INVALID_GLOBAL_OFFSET",
            -57: "CL_INVALID_EVENT_WAIT_LIST", -58: "CL_INVALID_EVENT", -59: "CL_INVALID_OPERATION",
            -60: "CL_INVALID_GL_OBJECT", -61: "CL_INVALID_BUFFER_SIZE", -62: "CL_INVALID_MIP_LEVEL",
            -63: "CL_INVALID_GLOBAL_WORK_SIZE", -64: "CL_INVALID_PROPERTY", -65: "CL_INVALID_IMAGE_DESCRIPTOR",
            -66: "CL_INVALID_COMPILER_OPTIONS", -67: "CL_INVALID_LINKER_OPTIONS", -68: "CL_INVALID_DEVICE_PARTITION_COUNT",
            -1001: "CL_PLATFORM_NOT_FOUND_KHR",
        ]
        return names[status] ?? "unknown OpenCL status"
    }

    /// Throws `.call(name, status)` unless `status` is CL_SUCCESS.
    static func check(_ status: Int32, _ name: String) throws {
        if status != Int32(EMBER_CL_SUCCESS) { throw OpenCLError.call(name, status: status) }
    }
}

extension OpenCLError: LocalizedError {
    public var errorDescription: String? { description }
}
