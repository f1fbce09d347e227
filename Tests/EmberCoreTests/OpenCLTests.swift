import CEmberKernels
@testable import EmberCore
import Foundation
import XCTest

/// Tests of the OpenCL backend, run for real on whatever OpenCL device is installed (PoCL on
/// the CPU in CI: `scripts/setup --opencl`). Only the absence of libOpenCL.so.1 skips them;
/// a library without any platform or device fails them.
///
/// Tolerances (u = 2^-24, float32 unit roundoff). The device quantizes activations exactly as
/// the CPU does (checked byte for byte) and forms the same integer sums per block, so a
/// matvec output differs from the CPU's only in float steps: each block term is a product of
/// two or three floats (one rounding each, maybe fused differently) and the B block terms of a
/// row are added in another order (CPU: in sequence or 8 lanes; device: 64 strided partial sums
/// and a tree), each side at most (B + 3) roundings of partial sums bounded by Σ_b |term_b|.
/// Σ_b |term_b| ≤ Σ_i |w_i·x̂_i| except for the K-quants' min terms, whose two halves can each be
/// up to about twice a block's largest |w|: hence the margin factor 4, and x̂ (the quantized
/// activation) is within 1 % of x. So |device − CPU| ≤ 8u · (B + 4) · Σ_i |w_i·x_i| holds with
/// margin, while one wrong quant or block changes the output by orders of magnitude more.
final class OpenCLTests: XCTestCase {
    typealias Rng = KernelTests.Rng
    typealias Matrix = SparseKernelTests.Matrix
    static let u = Double(Float.ulpOfOne) / 2

    /// The weight types the device kernels cover (those of the default models and a few more).
    static let matvecTypes: [(TensorType, String)] = [
        (.f32, "F32"), (.f16, "F16"), (.q4_0, "Q4_0"), (.q4_1, "Q4_1"), (.q5_0, "Q5_0"),
        (.q8_0, "Q8_0"), (.q4_K, "Q4_K"), (.q6_K, "Q6_K"),
    ]

    /// One device and its kernels for the whole test class (building the program takes a while).
    struct Shared {
        let system: OpenCLSystem
        let device: OpenCLDevice
        let kernels: OpenCLMatrixKernels
    }

    nonisolated(unsafe) static var shared: Result<Shared, Error>?

    /// The shared device; skips when libOpenCL.so.1 is absent, fails when it has no device.
    func openCL() throws -> Shared {
        try TestData.requireOpenCL("the OpenCL backend")
        if Self.shared == nil {
            Self.shared = Result {
                let system = try OpenCLSystem.discover().get()
                let device = try OpenCLDevice(system, choice: .automatic)
                return Shared(system: system, device: device, kernels: try OpenCLMatrixKernels(device: device))
            }
        }
        return try Self.shared!.get()
    }

    // MARK: Loading, devices, choice

    func testMissingLibraryIsReportedAsAValue() {
        let result = OpenCLSystem.discover(libraryPath: "/nonexistent/libOpenCL.so.1")
        guard case let .failure(unavailable) = result else { return XCTFail("a missing library was reported as available") }
        XCTAssertTrue(unavailable.reason.contains("/nonexistent/libOpenCL.so.1"), unavailable.reason)
    }

    func testLibraryWithoutOpenCLFunctionsIsReportedAsAValue() {
        // libm loads but has no OpenCL functions: the reason names the first one missing.
        guard case let .failure(unavailable) = OpenCLSystem.discover(libraryPath: "libm.so.6") else {
            return XCTFail("libm was taken for an OpenCL library")
        }
        XCTAssertTrue(unavailable.reason.contains("clGetPlatformIDs"), unavailable.reason)
    }

    func testListsDevicesGPUsFirst() throws {
        let system = try openCL().system
        XCTAssertFalse(system.platforms.isEmpty)
        XCTAssertFalse(system.devices.isEmpty)
        for (i, device) in system.devices.enumerated() {
            XCTAssertEqual(device.index, i)
            XCTAssertFalse(device.name.isEmpty)
            XCTAssertGreaterThan(device.globalMemoryBytes, 0)
            XCTAssertGreaterThan(device.maxAllocationBytes, 0)
            XCTAssertGreaterThan(device.computeUnits, 0)
            XCTAssertGreaterThanOrEqual(device.maxWorkGroupSize, OpenCLMatrixKernels.largestLocalSize)
        }
        let kinds = system.devices.map(\.kind)
        XCTAssertEqual(kinds, kinds.filter { $0 == .gpu } + kinds.filter { $0 != .gpu }, "GPUs must come first")
        XCTAssertEqual(try system.select(.automatic).get().index, 0)
        XCTAssertEqual(try system.select(.index(0)).get().name, system.devices[0].name)
        guard case .failure = try system.select(.off) else { return XCTFail("--gpu off still chose a device") }
        XCTAssertThrowsError(try system.select(.index(system.devices.count))) { error in
            XCTAssertEqual(error as? OpenCLError, .noSuchDevice(index: system.devices.count, count: system.devices.count))
        }
    }

    // MARK: Memory budget

    func testBuffersStayWithinTheBudget() throws {
        let shared = try openCL()
        let info = shared.device.info
        let device = try OpenCLDevice(info, library: shared.system.library, memoryBudget: 1 << 20)
        var first: OpenCLBuffer? = try device.makeBuffer(byteCount: 600_000, label: "first")
        XCTAssertEqual(device.bytesInUse, 600_000)
        XCTAssertThrowsError(try device.makeBuffer(byteCount: 500_000, label: "second")) { error in
            XCTAssertEqual(error as? OpenCLError,
                           .budgetExceeded(label: "second", requested: 500_000, inUse: 600_000, budget: 1 << 20))
        }
        XCTAssertEqual(device.bytesInUse, 600_000, "a refused allocation must not be counted")
        XCTAssertNotNil(first)
        first = nil
        XCTAssertEqual(device.bytesInUse, 0, "a released buffer returns its bytes to the budget")
        let second = try device.makeBuffer(byteCount: 500_000, label: "second")
        XCTAssertEqual(device.bytesAvailable, (1 << 20) - 500_000)
        XCTAssertThrowsError(try device.makeBuffer(byteCount: 0, label: "empty"))

        // A budget beyond the device's memory is refused up front.
        XCTAssertThrowsError(try OpenCLDevice(info, library: shared.system.library,
                                              memoryBudget: info.globalMemoryBytes + 1)) { error in
            XCTAssertEqual(error as? OpenCLError, .deviceTooSmall(device: info.name, requested: info.globalMemoryBytes + 1,
                                                                 available: info.globalMemoryBytes))
        }
        // Reads and writes outside a buffer are errors, not memory corruption.
        var bytes = [UInt8](repeating: 0, count: 16)
        XCTAssertThrowsError(try bytes.withUnsafeMutableBytes { try device.read(second, into: $0, offset: 499_990) })
        XCTAssertThrowsError(try bytes.withUnsafeBytes { try device.write($0, to: second, offset: -1) })
    }

    func testBuildFailureCarriesTheBuildLog() throws {
        let device = try openCL().device
        XCTAssertThrowsError(try OpenCLProgram(source: "kernel void broken(global float *x) { x[0] = undefined_name; }",
                                               name: "broken", device: device)) { error in
            guard case let .buildFailed(program, log)? = error as? OpenCLError else { return XCTFail("\(error)") }
            XCTAssertEqual(program, "broken")
            XCTAssertTrue(log.contains("undefined_name"), log)
        }
    }

    // MARK: Matrix kernels against the CPU

    /// The device's activation quantizers write the CPU's bytes exactly.
    func testActivationQuantizersMatchTheCPUByteForByte() throws {
        let shared = try openCL()
        try XCTSkipUnless(shared.device.info.correctlyRoundedDivision,
                          "the device has no correctly rounded division, so quants may differ by one step")
        var rng = Rng(state: 11)
        for type in [TensorType.q8_0, .q8_1, .q8_K] {
            let n = 768
            var x = rng.vector(n)
            x[300] = 0  // zeros, and in Q8_K an all-zero block
            if type == .q8_K { for i in 512..<768 { x[i] = 0 } }
            var expected = [UInt8](repeating: 0, count: OpenCLMatrixKernels.activationBytes(type, length: n))
            ember_quantize_activations(Int32(type.rawValue), x, &expected, Int64(n))
            let input = try shared.device.makeBuffer(copying: x, label: "x")
            let output = try shared.kernels.makeActivations(type, length: n)
            try shared.kernels.quantize(input, length: n, to: type, into: output)
            let got = try shared.device.read(output, count: expected.count, as: UInt8.self)
            XCTAssertEqual(got, expected, "\(type) activations differ from the CPU's")
        }
    }

    /// Row lengths per type: several blocks; floats also get a length that is no multiple of 8.
    static func lengths(_ type: TensorType) -> [Int] {
        type.blockSize == 1 ? [512, 100] : [type.blockSize * max(2, 768 / type.blockSize)]
    }

    /// The bound of the class comment for each output row (ids: which rows).
    static func bounds(_ m: Matrix, x: [Float], rows: [Int]) -> [Double] {
        let blocks = m.n / TensorType(rawValue: UInt32(m.type))!.blockSize
        return rows.map { r in
            let magnitude = zip(m.floats[r], x).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
            return 8 * u * Double(blocks + 4) * magnitude + 1e-30
        }
    }

    /// `x` on the device in `type`'s activation format (quantized by the device).
    func deviceActivations(_ x: [Float], for matrix: OpenCLWeightMatrix, count: Int = 1, _ shared: Shared) throws -> OpenCLBuffer {
        try shared.kernels.activations(for: matrix, from: try shared.device.makeBuffer(copying: x, label: "x"),
                                       length: x.count / count, count: count)
    }

    func testMatvecMatchesTheCPU() throws {
        let shared = try openCL()
        var rng = Rng(state: 12)
        for (type, name) in Self.matvecTypes {
            for n in Self.lengths(type) {
                let m = Matrix(type: Int32(type.rawValue), rows: 37, n: n, rng: &rng)
                let x = rng.vector(n)
                let expected = try m.bytes.withUnsafeBytes { raw -> [Float] in
                    let w = m.weightMatrix(raw.baseAddress!)
                    let a = ActivationBuffer(type: w.activationType, length: n, capacity: 1)
                    a.store(x, at: 0)
                    var y = [Float](repeating: .nan, count: m.rows)
                    w.multiply(a.vector(0), into: &y, rows: 0..<m.rows)
                    let uploaded = try shared.kernels.upload(w)
                    XCTAssertEqual(uploaded.activationType, w.activationType)
                    return y
                }
                let got = try m.bytes.withUnsafeBytes { raw -> [Float] in
                    let matrix = try shared.kernels.upload(m.weightMatrix(raw.baseAddress!))
                    let y = try shared.device.makeBuffer(byteCount: m.rows * 4, label: "y")
                    try shared.kernels.multiply(matrix, activations: try deviceActivations(x, for: matrix, shared), into: y)
                    return try shared.device.read(y, count: m.rows, as: Float.self)
                }
                let bounds = Self.bounds(m, x: x, rows: Array(0..<m.rows))
                for r in 0..<m.rows where !(abs(Double(got[r]) - Double(expected[r])) <= bounds[r]) {
                    XCTFail("\(name) n=\(n): y[\(r)] = \(got[r]) on the device, \(expected[r]) on the CPU (bound \(bounds[r]))")
                    break
                }
            }
        }
    }

    /// Prefill: several activation vectors, quantized on the device in one call, against the
    /// CPU's matmul (whose tiles sum in yet another order; same bound as the matvec).
    func testMatmulMatchesTheCPU() throws {
        let shared = try openCL()
        var rng = Rng(state: 16)
        let count = 5
        for (type, name) in Self.matvecTypes {
            let n = Self.lengths(type)[0]
            let m = Matrix(type: Int32(type.rawValue), rows: 19, n: n, rng: &rng)
            let xs = (0..<count).map { _ in rng.vector(n) }
            try m.bytes.withUnsafeBytes { raw in
                let w = m.weightMatrix(raw.baseAddress!)
                let a = ActivationBuffer(type: w.activationType, length: n, capacity: count)
                for c in 0..<count { a.store(xs[c], at: c) }
                var expected = [Float](repeating: .nan, count: m.rows * count)
                w.multiply(a.vector(0), stride: a.stride, count: count, into: &expected, ldy: m.rows, rows: 0..<m.rows)

                let matrix = try shared.kernels.upload(w)
                let y = try shared.device.makeBuffer(byteCount: m.rows * count * 4, label: "y")
                try shared.kernels.multiply(matrix, activations: try deviceActivations(xs.flatMap { $0 }, for: matrix, count: count, shared),
                                            count: count, into: y)
                let got = try shared.device.read(y, count: m.rows * count, as: Float.self)
                for c in 0..<count {
                    let bounds = Self.bounds(m, x: xs[c], rows: Array(0..<m.rows))
                    for r in 0..<m.rows where !(abs(Double(got[c * m.rows + r]) - Double(expected[c * m.rows + r])) <= bounds[r]) {
                        XCTFail("\(name): y[\(c), \(r)] = \(got[c * m.rows + r]) on the device, \(expected[c * m.rows + r]) on the CPU")
                        return
                    }
                }
            }
        }
    }

    func testRowGatherMatchesTheCPU() throws {
        let shared = try openCL()
        var rng = Rng(state: 13)
        for (type, name) in Self.matvecTypes {
            let n = Self.lengths(type)[0]
            let m = Matrix(type: Int32(type.rawValue), rows: 41, n: n, rng: &rng)
            let x = rng.vector(n)
            let ids = SparseKernelTests.rowIds(17, of: m.rows, rng: &rng)
            try m.bytes.withUnsafeBytes { raw in
                let w = m.weightMatrix(raw.baseAddress!)
                let a = ActivationBuffer(type: w.activationType, length: n, capacity: 1)
                a.store(x, at: 0)
                var expected = [Float](repeating: .nan, count: ids.count)
                w.multiply(gathering: ids, count: ids.count, activations: a.vector(0), into: &expected)

                let matrix = try shared.kernels.upload(w)
                let idBuffer = try shared.kernels.ids(ids, for: matrix)
                let y = try shared.device.makeBuffer(byteCount: ids.count * 4, label: "y")
                try shared.kernels.multiply(matrix, gathering: idBuffer, count: ids.count,
                                            activations: try deviceActivations(x, for: matrix, shared), into: y)
                let got = try shared.device.read(y, count: ids.count, as: Float.self)
                let bounds = Self.bounds(m, x: x, rows: ids.map(Int.init))
                for k in ids.indices where !(abs(Double(got[k]) - Double(expected[k])) <= bounds[k]) {
                    XCTFail("\(name): y[\(k)] (row \(ids[k])) = \(got[k]) on the device, \(expected[k]) on the CPU")
                    break
                }
                // Ids outside the matrix are refused on the host, and read nothing on the device.
                XCTAssertThrowsError(try shared.kernels.ids([0, Int32(m.rows)], for: matrix))
                let bad = try shared.device.makeBuffer(copying: [Int32(3), -5, Int32(m.rows)], label: "bad ids")
                try shared.kernels.multiply(matrix, gathering: bad, count: 3,
                                            activations: try deviceActivations(x, for: matrix, shared), into: y)
                let flagged = try shared.device.read(y, count: 3, as: Float.self)
                XCTAssertFalse(flagged[0].isNaN)
                XCTAssertTrue(flagged[1].isNaN && flagged[2].isNaN, "\(name): bad ids gave \(flagged)")
            }
        }
    }

    /// Column gather against NeuronMajorMatrix.accumulate. Both sides add count products to y0
    /// (CPU: the block scale folded into the coefficient, FMAs in row order; device: the same
    /// order into a zeroed sum, then y0): every intermediate is bounded by
    /// |y0| + 2 · Σ_k |c_k| · max|row_k|, so 8u · (count + 4) times that bounds the difference.
    func testColumnGatherMatchesTheCPU() throws {
        let shared = try openCL()
        var rng = Rng(state: 14)
        let pool = ThreadPool(threads: 1)
        // Hidden sizes: a multiple of 32 (stored Q8_0) and one that is not (stored F16).
        for (hidden, expectedType) in [(96, TensorType.q8_0), (72, .f16)] {
            let neurons = 64
            let source = Matrix(type: Int32(TensorType.q4_1.rawValue), rows: hidden, n: neurons, rng: &rng)
            try source.bytes.withUnsafeBytes { raw in
                let down = try NeuronMajorMatrix(transposing: source.weightMatrix(raw.baseAddress!), pool: pool)
                XCTAssertEqual(down.type, expectedType)
                let ids = SparseKernelTests.rowIds(23, of: neurons, rng: &rng)
                let coefficients = rng.vector(ids.count)
                let y0 = rng.vector(hidden)
                var expected = y0
                down.accumulate(rows: ids, coefficients: coefficients, count: ids.count, into: &expected)

                let matrix = try shared.kernels.upload(down)
                let y = try shared.device.makeBuffer(copying: y0, label: "y")
                try shared.kernels.accumulate(matrix, rows: try shared.kernels.ids(ids, for: matrix),
                                              coefficients: try shared.device.makeBuffer(copying: coefficients, label: "c"),
                                              count: ids.count, into: y)
                let got = try shared.device.read(y, count: hidden, as: Float.self)

                var rowFloats = [Float](repeating: 0, count: hidden)
                var magnitude = y0.map { abs(Double($0)) }
                for (k, id) in ids.enumerated() {
                    down.weights.dequantizeRow(Int(id), into: &rowFloats)
                    let largest = Double(rowFloats.map(abs).max() ?? 0)
                    for i in 0..<hidden { magnitude[i] += 2 * abs(Double(coefficients[k])) * largest }
                }
                let bound = 8 * Self.u * Double(ids.count + 4)
                for i in 0..<hidden where !(abs(Double(got[i]) - Double(expected[i])) <= bound * magnitude[i]) {
                    XCTFail("\(expectedType) hidden=\(hidden): y[\(i)] = \(got[i]) on the device, \(expected[i]) on the CPU")
                    break
                }
            }
        }
    }

    func testMalformedRequestsThrow() throws {
        let shared = try openCL()
        var rng = Rng(state: 15)
        let m = Matrix(type: Int32(TensorType.q5_K.rawValue), rows: 4, n: 256, rng: &rng)
        try m.bytes.withUnsafeBytes { raw in
            // A type without device kernels.
            XCTAssertThrowsError(try shared.kernels.upload(m.weightMatrix(raw.baseAddress!))) { error in
                XCTAssertEqual(error as? OpenCLError, .unsupportedType(matrix: "test", type: .q5_K, operation: "matrix"))
            }
        }
        let q = Matrix(type: Int32(TensorType.q8_0.rawValue), rows: 8, n: 64, rng: &rng)
        try q.bytes.withUnsafeBytes { raw in
            let matrix = try shared.kernels.upload(q.weightMatrix(raw.baseAddress!))
            let activations = try shared.kernels.makeActivations(.q8_0, length: 64)
            let small = try shared.device.makeBuffer(byteCount: 4, label: "small")
            // An output too small for every row, activations too short for a row.
            XCTAssertThrowsError(try shared.kernels.multiply(matrix, activations: activations, into: small)) { error in
                XCTAssertEqual(error as? OpenCLError, .bufferTooSmall(label: "small", needed: 32, available: 4))
            }
            XCTAssertThrowsError(try shared.kernels.multiply(matrix, activations: small, into: activations))
            // A length that is not a whole number of activation blocks.
            XCTAssertThrowsError(try shared.kernels.quantize(small, length: 20, to: .q8_0, into: activations))
        }
    }

    // MARK: Vector kernels against the CPU

    func vectorKernels(_ shared: Shared) throws -> OpenCLVectorKernels {
        if Self.vectorKernels == nil { Self.vectorKernels = try OpenCLVectorKernels(device: shared.device) }
        return Self.vectorKernels!
    }

    nonisolated(unsafe) static var vectorKernels: OpenCLVectorKernels?

    /// Both sides sum the n squares (all positive, so each sum is within (n + 2)u relative of
    /// the exact one, whatever the order), then take a square root (halving that), one division
    /// and two products: |device − CPU| ≤ (n + 16)u · |out|.
    func testRMSNormMatchesTheCPU() throws {
        let shared = try openCL()
        let kernels = try vectorKernels(shared)
        var rng = Rng(state: 21)
        let n = 200, rows = 3
        let x = rng.vector(n * rows), w = rng.vector(n)
        for weighted in [true, false] {
            var expected = [Float](repeating: 0, count: n * rows)
            for r in 0..<rows {
                x.withUnsafeBufferPointer { xp in
                    expected.withUnsafeMutableBufferPointer { out in
                        VectorKernels.rmsNorm(xp.baseAddress! + r * n, weight: weighted ? w : nil, epsilon: 1e-6,
                                              out.baseAddress! + r * n, n)
                    }
                }
            }
            let buffer = try shared.device.makeBuffer(copying: x, label: "x")
            try kernels.rmsNorm(buffer, weight: weighted ? try shared.device.makeBuffer(copying: w, label: "w") : nil,
                                epsilon: 1e-6, rows: rows, length: n, into: buffer)
            let got = try shared.device.read(buffer, count: n * rows, as: Float.self)
            for i in got.indices where !(abs(got[i] - expected[i]) <= Float(n + 16) * Float(Self.u) * abs(expected[i])) {
                XCTFail("weighted \(weighted): out[\(i)] = \(got[i]) on the device, \(expected[i]) on the CPU")
                break
            }
        }
    }

    /// exp and tanh come from different libraries on each side (a few ulp each, relative), then
    /// a handful of roundings. GELU's 1 + tanh(z) cancels for very negative inputs, so its error
    /// is absolute there, of order u · |g| · |up|: |device − CPU| ≤ 64u · (|out| + |g| · |up|).
    /// PowerInfer's files store down neuron-major in Q4_0, used in place: the device gathers
    /// those rows as they are. Bounds as for the Q8_0 rows above, plus the CPU's rounding of
    /// its Q4_0 coefficients (SparseKernelTests.coefficientRounding; the device's are floats).
    func testQ4_0ColumnGatherMatchesTheCPU() throws {
        let shared = try openCL()
        var rng = Rng(state: 15)
        let hidden = 128, neurons = 96
        let source = Matrix(type: Int32(TensorType.q4_0.rawValue), rows: neurons, n: hidden, rng: &rng)
        try source.bytes.withUnsafeBytes { raw in
            let down = NeuronMajorMatrix(inPlace: source.weightMatrix(raw.baseAddress!))
            let ids = SparseKernelTests.rowIds(37, of: neurons, rng: &rng)
            let coefficients = rng.vector(ids.count), y0 = rng.vector(hidden)
            var expected = y0
            down.accumulate(rows: ids, coefficients: coefficients, count: ids.count, into: &expected)
            let matrix = try shared.kernels.upload(down)
            let y = try shared.device.makeBuffer(copying: y0, label: "y")
            try shared.kernels.accumulate(matrix, rows: try shared.kernels.ids(ids, for: matrix),
                                          coefficients: try shared.device.makeBuffer(copying: coefficients, label: "c"),
                                          count: ids.count, into: y)
            let got = try shared.device.read(y, count: hidden, as: Float.self)
            var rowFloats = [Float](repeating: 0, count: hidden)
            var magnitude = y0.map { abs(Double($0)) }
            for (k, id) in ids.enumerated() {
                down.weights.dequantizeRow(Int(id), into: &rowFloats)
                let largest = Double(rowFloats.map(abs).max() ?? 0)
                for i in 0..<hidden { magnitude[i] += 2 * abs(Double(coefficients[k])) * largest }
            }
            let bound = 8 * Self.u * Double(ids.count + 4)
            let rounding = SparseKernelTests.coefficientRounding(source, ids: ids, coef: coefficients,
                                                                 path: ember_has_avx2() != 0 ? "AVX2" : "portable")
            for i in 0..<hidden where !(abs(Double(got[i]) - Double(expected[i])) <= bound * magnitude[i] + rounding[i]) {
                XCTFail("Q4_0: y[\(i)] = \(got[i]) on the device, \(expected[i]) on the CPU")
                break
            }
        }
    }

    func testGatedActivationMatchesTheCPU() throws {
        let shared = try openCL()
        let kernels = try vectorKernels(shared)
        var rng = Rng(state: 22)
        let n = 300
        let gate = rng.vector(n).map { $0 * 6 }, up = rng.vector(n)
        for activation in [VectorKernels.Activation.silu, .gelu, .relu, .drelu] {
            for gated in [true, false] {
                var expected = [Float](repeating: 0, count: n)
                VectorKernels.gatedActivation(activation, gate: gate, up: gated ? up : nil, &expected, n)
                let g = try shared.device.makeBuffer(copying: gate, label: "gate")
                let out = try shared.device.makeBuffer(byteCount: n * 4, label: "out")
                try kernels.gatedActivation(activation, gate: g, up: gated ? try shared.device.makeBuffer(copying: up, label: "up") : nil,
                                            count: n, into: out)
                let got = try shared.device.read(out, count: n, as: Float.self)
                for i in 0..<n {
                    let bound = 64 * Float(Self.u) * (abs(expected[i]) + abs(gate[i]) * (gated ? abs(up[i]) : 1))
                    if !(abs(got[i] - expected[i]) <= bound) {
                        XCTFail("\(activation) gated \(gated): out[\(i)] = \(got[i]) on the device, \(expected[i]) on the CPU")
                        break
                    }
                }
            }
        }
    }

    /// Each output is a·cos ∓ b·sin: two products and an add, perhaps fused on one side only,
    /// so |device − CPU| ≤ 8u · (|a| + |b|) (|cos|, |sin| ≤ 1).
    func testRopeMatchesTheCPU() throws {
        let shared = try openCL()
        let kernels = try vectorKernels(shared)
        var rng = Rng(state: 23)
        let heads = 3, headDimension = 64
        for rope in [Rope(layout: .adjacent, dimensions: 64, base: 10000), Rope(layout: .halves, dimensions: 48, base: 1e6)] {
            let x = rng.vector(heads * headDimension)
            var cosines = [Float](repeating: 0, count: rope.dimensions / 2), sines = cosines
            rope.angles(at: 37, cos: &cosines, sin: &sines)
            var expected = x
            expected.withUnsafeMutableBufferPointer { e in
                for h in 0..<heads { rope.rotate(e.baseAddress! + h * headDimension, cos: cosines, sin: sines) }
            }
            let buffer = try shared.device.makeBuffer(copying: x, label: "x")
            try kernels.rope(buffer, heads: heads, headDimension: headDimension, rope: rope,
                             cosines: try shared.device.makeBuffer(copying: cosines, label: "cos"),
                             sines: try shared.device.makeBuffer(copying: sines, label: "sin"))
            let got = try shared.device.read(buffer, count: x.count, as: Float.self)
            let bound = 8 * Float(Self.u) * 2 * (x.map(abs).max() ?? 0)
            for i in got.indices where !(abs(got[i] - expected[i]) <= bound) {
                XCTFail("\(rope.layout): x[\(i)] = \(got[i]) on the device, \(expected[i]) on the CPU")
                break
            }
            XCTAssertEqual(Array(got[rope.dimensions..<headDimension]), Array(x[rope.dimensions..<headDimension]),
                           "dimensions past the rotated part must pass through")
        }
    }

    /// Logits are head_dim-term dots (error ≤ 2·hd·u·L each, L = scale · max_p Σ|q·k|, both
    /// sides together); a logit error δ changes exp by a relative δ, and the softmax adds the
    /// exp libraries' few ulp, the sum over count positions and a division: each weight s_p
    /// is within ρ = 2·(2·hd·u·L) + (count + 12)u relative. The output then sums count products
    /// in another order: |device − CPU| ≤ 2 · (ρ + 2(count + 1)u) · Σ_p s_p |v_p| (factor 2: margin).
    func testAttentionMatchesTheCPU() throws {
        let shared = try openCL()
        let kernels = try vectorKernels(shared)
        var rng = Rng(state: 24)
        let heads = 4, kvHeads = 2, hd = 64, vd = 48
        let keyStride = kvHeads * hd + 8, valueStride = kvHeads * vd + 4  // padded, as a cache row may be
        let scale = 1 / Float(hd).squareRoot()
        // (first cached position, positions attended): the last case is a sliding window.
        for (first, count) in [(0, 1), (0, 37), (0, 150), (9, 30)] {
            let q = rng.vector(heads * hd).map { $0 * 3 }
            let stored = first + count
            let allKeys = rng.vector(stored * keyStride), allValues = rng.vector(stored * valueStride)
            let keys = Array(allKeys[(first * keyStride)...]), values = Array(allValues[(first * valueStride)...])
            var expected = [Float](repeating: 0, count: heads * vd)
            var weights = [[Float]](repeating: [], count: heads)
            for h in 0..<heads {
                let g = h / (heads / kvHeads)
                var scores = [Float](repeating: 0, count: count)
                q.withUnsafeBufferPointer { qp in
                    keys.withUnsafeBufferPointer { kp in
                        values.withUnsafeBufferPointer { vp in
                            expected.withUnsafeMutableBufferPointer { out in
                                ember_attention_head(qp.baseAddress! + h * hd, kp.baseAddress! + g * hd, Int64(keyStride),
                                                     vp.baseAddress! + g * vd, Int64(valueStride), Int64(count), Int64(hd),
                                                     Int64(vd), scale, &scores, out.baseAddress! + h * vd)
                            }
                        }
                    }
                }
                weights[h] = scores
            }
            let cache = OpenCLVectorKernels.CacheLayout(keys: try shared.device.makeBuffer(copying: allKeys, label: "keys"),
                                                         keyStride: keyStride,
                                                         values: try shared.device.makeBuffer(copying: allValues, label: "values"),
                                                         valueStride: valueStride)
            let out = try shared.device.makeBuffer(byteCount: heads * vd * 4, label: "out")
            try kernels.attention(query: try shared.device.makeBuffer(copying: q, label: "q"), cache: cache,
                                  firstPosition: first, count: count,
                                  heads: heads, kvHeads: kvHeads, headDimension: hd, valueDimension: vd, scale: scale,
                                  scores: try shared.device.makeBuffer(byteCount: heads * count * 4, label: "scores"), into: out)
            let got = try shared.device.read(out, count: heads * vd, as: Float.self)
            for h in 0..<heads {
                let g = h / (heads / kvHeads)
                var largest = 0.0
                for p in 0..<count {
                    var l = 0.0
                    for i in 0..<hd { l += abs(Double(q[h * hd + i]) * Double(keys[p * keyStride + g * hd + i])) }
                    largest = max(largest, l * Double(scale))
                }
                let rho = 2 * (2 * Double(hd) * Self.u * largest) + Double(count + 12) * Self.u
                for i in 0..<vd {
                    var weighted = 0.0
                    for p in 0..<count { weighted += Double(weights[h][p]) * abs(Double(values[p * valueStride + g * vd + i])) }
                    let bound = 2 * (rho + 2 * Double(count + 1) * Self.u) * weighted
                    let e = expected[h * vd + i], d = got[h * vd + i]
                    if !(abs(Double(d) - Double(e)) <= bound) {
                        XCTFail("count \(count) head \(h): out[\(i)] = \(d) on the device, \(e) on the CPU (bound \(bound))")
                        return
                    }
                }
            }
        }
    }

    // MARK: The device's share of a sparse FFN

    /// The chain gather → activation → column gather against SparseFeedForward.run on the CPU.
    /// Errors propagate: gate and up values within their matvec bounds B_g, B_u (class comment);
    /// the activation's slope is below 1.2 and its own error 64u · (|c| + |g·u|) as tested above,
    /// so each coefficient is within e_k = 1.2·B_g·|u| + |act(g)|·B_u + 64u·(|c| + |g·u|); the
    /// output within Σ_k e_k·|down_k| plus the column gather's own bound; factor 2 for margin.
    func testSparseFeedForwardMatchesTheCPU() throws {
        let shared = try openCL()
        let vectors = try vectorKernels(shared)
        var rng = Rng(state: 31)
        let hidden = 96, neurons = 64
        let type = Int32(TensorType.q4_1.rawValue)
        let gate = Matrix(type: type, rows: neurons, n: hidden, rng: &rng)
        let up = Matrix(type: type, rows: neurons, n: hidden, rng: &rng)
        let downSource = Matrix(type: type, rows: hidden, n: neurons, rng: &rng)
        let x = rng.vector(hidden)
        let active = SparseKernelTests.rowIds(20, of: neurons, rng: &rng).reduce(into: [Int32]()) { if !$0.contains($1) { $0.append($1) } }
        let pool = ThreadPool(threads: 1)
        try gate.bytes.withUnsafeBytes { g in
            try up.bytes.withUnsafeBytes { u in
                try downSource.bytes.withUnsafeBytes { dn in
                    let gw = gate.weightMatrix(g.baseAddress!), uw = up.weightMatrix(u.baseAddress!)
                    let down = try NeuronMajorMatrix(transposing: downSource.weightMatrix(dn.baseAddress!), pool: pool)
                    var expected = [Float](repeating: 0, count: hidden)
                    let workspace = SparseFeedForward.Workspace(threads: 1, hiddenLength: hidden, neuronCount: neurons)
                    SparseFeedForward.run(pool: pool, gate: gw, up: uw, down: down, activation: .silu, input: x,
                                          active: active, count: active.count, output: &expected, workspace: workspace)

                    let ffn = try OpenCLSparseFeedForward(matrices: shared.kernels, vectors: vectors, gate: gw, up: uw,
                                                          down: down, activation: .silu, capacity: neurons)
                    let output = try shared.device.makeBuffer(copying: [Float](repeating: 0, count: hidden), label: "out")
                    try ffn.run(input: try shared.device.makeBuffer(copying: x, label: "x"),
                                active: try shared.kernels.ids(active, for: ffn.up), count: active.count, output: output)
                    let got = try shared.device.read(output, count: hidden, as: Float.self)
                    XCTAssertGreaterThan(expected.map(abs).max() ?? 0, 0.1, "a vacuous comparison")
                    XCTAssertThrowsError(try ffn.run(input: output, active: output, count: neurons + 1, output: output))

                    // The bound, from the CPU's own gate and up values.
                    let a = ActivationBuffer(type: uw.activationType, length: hidden, capacity: 1)
                    a.store(x, at: 0)
                    var gv = [Float](repeating: 0, count: active.count), uv = gv, cv = gv
                    gw.multiply(gathering: active, count: active.count, activations: a.vector(0), into: &gv)
                    uw.multiply(gathering: active, count: active.count, activations: a.vector(0), into: &uv)
                    VectorKernels.gatedActivation(.silu, gate: gv, up: uv, &cv, active.count)
                    let bg = Self.bounds(gate, x: x, rows: active.map(Int.init)), bu = Self.bounds(up, x: x, rows: active.map(Int.init))
                    var rowFloats = [Float](repeating: 0, count: hidden)
                    var bound = [Double](repeating: 0, count: hidden)
                    for k in active.indices {
                        let act = Double(cv[k]) / Double(uv[k] == 0 ? 1 : uv[k])
                        let e = 1.2 * bg[k] * abs(Double(uv[k])) + abs(act) * bu[k]
                            + 64 * Self.u * (abs(Double(cv[k])) + abs(Double(gv[k] * uv[k])))
                        down.weights.dequantizeRow(Int(active[k]), into: &rowFloats)
                        let largest = Double(rowFloats.map(abs).max() ?? 0)
                        for j in 0..<hidden {
                            bound[j] += e * abs(Double(rowFloats[j]))
                                + 8 * Self.u * Double(active.count + 4) * 2 * abs(Double(cv[k])) * largest
                        }
                    }
                    for j in 0..<hidden where !(abs(Double(got[j]) - Double(expected[j])) <= 2 * bound[j]) {
                        XCTFail("y[\(j)] = \(got[j]) on the device, \(expected[j]) on the CPU (bound \(2 * bound[j]))")
                        break
                    }
                }
            }
        }
    }
}
