import CEmberKernels
import Foundation

/// An OpenCL device opened for work: its context, one in-order command queue, and Ember's own
/// account of the memory its buffers take. Drivers do not all enforce the memory size they
/// report (PoCL on the CPU hands out more and lets the host swap), so Ember never allocates
/// past `memoryBudget` and says so instead.
///
/// Commands run in the order they are enqueued; `finish()` waits for all of them. One thread
/// at a time enqueues on a device.
final class OpenCLDevice: @unchecked Sendable {
    let info: OpenCLDeviceInfo
    let library: OpenCLLibrary
    /// Bytes Ember lets its buffers take on this device.
    let memoryBudget: Int
    let context: OpaquePointer
    let queue: OpaquePointer

    private let accounting = NSLock()
    private var allocated = 0

    /// Opens `info`'s device with a budget of `memoryBudget` bytes (nil: all the memory it
    /// reports). Throws `deviceTooSmall` when the device reports less memory than asked.
    init(_ info: OpenCLDeviceInfo, library: OpenCLLibrary, memoryBudget: Int? = nil) throws {
        let budget = memoryBudget ?? info.globalMemoryBytes
        guard budget >= 0 else { throw OpenCLError.invalidArgument("OpenCL memory budget must not be negative (\(budget))") }
        guard budget <= info.globalMemoryBytes else {
            throw OpenCLError.deviceTooSmall(device: info.name, requested: budget, available: info.globalMemoryBytes)
        }
        self.info = info
        self.library = library
        self.memoryBudget = budget
        let api = library.api
        var status: Int32 = 0
        var device: OpaquePointer? = info.deviceID
        guard let context = api.clCreateContext(nil, 1, &device, nil, nil, &status), status == 0 else {
            throw OpenCLError.call("clCreateContext", status: status)
        }
        guard let queue = api.clCreateCommandQueue(context, info.deviceID, 0, &status), status == 0 else {
            _ = api.clReleaseContext(context)
            throw OpenCLError.call("clCreateCommandQueue", status: status)
        }
        self.context = context
        self.queue = queue
    }

    /// Opens the device `choice` selects in `system`.
    convenience init(_ system: OpenCLSystem, choice: DeviceChoice, memoryBudget: Int? = nil) throws {
        switch try system.select(choice) {
        case let .success(info): try self.init(info, library: system.library, memoryBudget: memoryBudget)
        case let .failure(unavailable): throw unavailable
        }
    }

    deinit {
        _ = library.api.clFinish(queue)
        _ = library.api.clReleaseCommandQueue(queue)
        _ = library.api.clReleaseContext(context)
    }

    /// Bytes Ember's live buffers take on this device.
    var bytesInUse: Int {
        accounting.lock()
        defer { accounting.unlock() }
        return allocated
    }

    /// Bytes still free under the budget.
    var bytesAvailable: Int { memoryBudget - bytesInUse }

    // MARK: Buffers

    /// A new buffer of `byteCount` bytes (contents undefined), counted against the budget.
    func makeBuffer(byteCount: Int, label: String) throws -> OpenCLBuffer {
        guard byteCount > 0 else { throw OpenCLError.invalidArgument("OpenCL buffer \(label) must not be empty") }
        guard byteCount <= info.maxAllocationBytes else {
            throw OpenCLError.allocationTooLarge(label: label, requested: byteCount, limit: info.maxAllocationBytes)
        }
        try reserve(byteCount, label: label)
        var status: Int32 = 0
        guard let memory = library.api.clCreateBuffer(context, UInt64(EMBER_CL_MEM_READ_WRITE), byteCount, nil, &status),
              status == 0 else {
            release(byteCount)
            throw OpenCLError.call("clCreateBuffer", status: status)
        }
        return OpenCLBuffer(device: self, memory: memory, byteCount: byteCount, label: label)
    }

    /// A new buffer holding a copy of `bytes`.
    func makeBuffer(copying bytes: UnsafeRawBufferPointer, label: String) throws -> OpenCLBuffer {
        let buffer = try makeBuffer(byteCount: bytes.count, label: label)
        try write(bytes, to: buffer)
        return buffer
    }

    /// A new buffer holding a copy of `values`.
    func makeBuffer<T>(copying values: [T], label: String) throws -> OpenCLBuffer {
        try values.withUnsafeBytes { try makeBuffer(copying: $0, label: label) }
    }

    /// Copies `bytes` into `buffer` at `offset`; returns once the host memory may be reused.
    func write(_ bytes: UnsafeRawBufferPointer, to buffer: OpenCLBuffer, offset: Int = 0) throws {
        try buffer.check(offset: offset, count: bytes.count)
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try OpenCLError.check(library.api.clEnqueueWriteBuffer(queue, buffer.memory, UInt32(EMBER_CL_TRUE), offset,
                                                               bytes.count, base, 0, nil, nil), "clEnqueueWriteBuffer")
    }

    /// Copies `values` into `buffer` from its start.
    func write<T>(_ values: [T], to buffer: OpenCLBuffer) throws {
        try values.withUnsafeBytes { try write($0, to: buffer) }
    }

    /// Copies `bytes.count` bytes of `buffer` from `offset` into `bytes`, after every command
    /// enqueued before has finished.
    func read(_ buffer: OpenCLBuffer, into bytes: UnsafeMutableRawBufferPointer, offset: Int = 0) throws {
        try buffer.check(offset: offset, count: bytes.count)
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try OpenCLError.check(library.api.clEnqueueReadBuffer(queue, buffer.memory, UInt32(EMBER_CL_TRUE), offset,
                                                              bytes.count, base, 0, nil, nil), "clEnqueueReadBuffer")
    }

    /// The first `count` values of type `T` in `buffer`.
    func read<T: BitwiseCopyable>(_ buffer: OpenCLBuffer, count: Int, as type: T.Type) throws -> [T] {
        var values = [T](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
        try values.withUnsafeMutableBytes { try read(buffer, into: $0) }
        return values
    }

    fileprivate func reserve(_ bytes: Int, label: String) throws {
        accounting.lock()
        defer { accounting.unlock() }
        guard bytes <= memoryBudget - allocated else {
            throw OpenCLError.budgetExceeded(label: label, requested: bytes, inUse: allocated, budget: memoryBudget)
        }
        allocated += bytes
    }

    fileprivate func release(_ bytes: Int) {
        accounting.lock()
        allocated -= bytes
        accounting.unlock()
    }

    // MARK: Work

    /// Waits until every enqueued command has finished.
    func finish() throws {
        try OpenCLError.check(library.api.clFinish(queue), "clFinish")
    }

    /// Sends the enqueued commands to the device without waiting.
    func flush() throws {
        try OpenCLError.check(library.api.clFlush(queue), "clFlush")
    }

    /// Enqueues `kernel` over `globalSize` work-items in groups of `localSize`; the global size
    /// is rounded up to a multiple of the local size (kernels ignore the extra items).
    func enqueue(_ kernel: OpenCLKernel, globalSize: Int, localSize: Int) throws {
        try enqueue(kernel, globalSizes: [globalSize], localSizes: [localSize])
    }

    /// The same over a grid of one to three dimensions.
    func enqueue(_ kernel: OpenCLKernel, globalSizes: [Int], localSizes: [Int]) throws {
        guard (1...3).contains(globalSizes.count), localSizes.count == globalSizes.count,
              zip(globalSizes, localSizes).allSatisfy({ $0 > 0 && $1 > 0 }) else {
            throw OpenCLError.invalidArgument("\(kernel.name): empty or malformed launch (\(globalSizes) items in groups of \(localSizes))")
        }
        var global = zip(globalSizes, localSizes).map { ($0 + $1 - 1) / $1 * $1 }
        var local = localSizes
        try OpenCLError.check(library.api.clEnqueueNDRangeKernel(queue, kernel.handle, UInt32(global.count), nil, &global,
                                                                 &local, 0, nil, nil),
                              "clEnqueueNDRangeKernel(\(kernel.name))")
    }
}

/// Memory on an OpenCL device. Released, and returned to the device's budget, when the last
/// reference goes (the driver keeps it alive for commands still using it).
final class OpenCLBuffer: @unchecked Sendable {
    let byteCount: Int
    let label: String
    let memory: OpaquePointer
    private let device: OpenCLDevice

    fileprivate init(device: OpenCLDevice, memory: OpaquePointer, byteCount: Int, label: String) {
        self.device = device
        self.memory = memory
        self.byteCount = byteCount
        self.label = label
    }

    deinit {
        _ = device.library.api.clReleaseMemObject(memory)
        device.release(byteCount)
    }

    /// Throws unless [offset, offset + count) lies inside the buffer.
    func check(offset: Int, count: Int) throws {
        guard offset >= 0, count >= 0, offset <= byteCount, count <= byteCount - offset else {
            throw OpenCLError.bufferTooSmall(label: label, needed: max(0, offset) + max(0, count), available: byteCount)
        }
    }

    /// Throws unless the buffer holds at least `bytes` bytes.
    func require(_ bytes: Int) throws {
        guard bytes <= byteCount else { throw OpenCLError.bufferTooSmall(label: label, needed: bytes, available: byteCount) }
    }
}
