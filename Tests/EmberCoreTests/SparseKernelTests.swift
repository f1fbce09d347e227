import CEmberKernels
@testable import EmberCore
import XCTest

/// Tests of the neuron-aware sparse operators (ember_sparse.h, SparseKernels.swift) on
/// generated data, for every weight type.
///
/// Tolerances (u = 2^-24, float32 unit roundoff):
/// - Gathered dot products go through the same tiles as ember_matvec (on row pointers):
///   compared bit for bit, on each path (AVX2 and portable), and across paths within the
///   dot-product bound of KernelTests.
/// - Column gather against a double-precision sum of coef · (row expanded by
///   ember_dequantize_row): each kernel adds count rows in sequence, each step a product and an
///   add (or one FMA), and the fast paths fold the block scale into the coefficient first (one
///   more rounding) and add Q4_1's offsets per block. Every intermediate is bounded by
///   3 · Σ|c_k| · max|row_k| (Q4_1: |q·d| + |m| ≤ 3 · the block's largest value), so
///   8u · (count + 4) · (|y0| + Σ_k |c_k| · max|row_k|) bounds the difference with margin.
///   One wrong row changes an element by about |c · x|, orders of magnitude more.
///   Q4_0 on AVX2 also rounds each group's products c · block scale to 8-bit steps of the
///   group's largest (ember_sparse.h): `coefficientRounding` adds that rounding's bound.
final class SparseKernelTests: XCTestCase {
    typealias Rng = KernelTests.Rng
    static let u = Double(Float.ulpOfOne) / 2

    /// A generated matrix (rows x n of `type`) with its rows expanded back to floats.
    struct Matrix {
        let type: Int32
        let rows: Int, n: Int, rowBytes: Int
        var bytes: [UInt8]
        var floats: [[Float]]

        init(type: Int32, rows: Int, n: Int, rng: inout Rng) {
            self.type = type
            self.rows = rows
            self.n = n
            rowBytes = ember_row_bytes(type, Int64(n))
            bytes = [UInt8](repeating: 0, count: rows * rowBytes)
            floats = []
            for r in 0..<rows {
                let x = rng.vector(n)
                var row = [UInt8](repeating: 0, count: rowBytes)
                ember_quantize_row(type, x, &row, Int64(n))
                bytes.replaceSubrange(r * rowBytes..<(r + 1) * rowBytes, with: row)
                var back = [Float](repeating: 0, count: n)
                ember_dequantize_row(type, row, &back, Int64(n))
                floats.append(back)
            }
        }

        func weightMatrix(_ pointer: UnsafeRawPointer) -> WeightMatrix {
            WeightMatrix(name: "test", type: TensorType(rawValue: UInt32(type))!, rows: rows, columns: n, data: pointer)
        }
    }

    static func activations(_ weightType: Int32, _ x: [Float]) -> [UInt8] {
        let at = ember_activation_type(weightType)
        var out = [UInt8](repeating: 0, count: ember_activation_bytes(at, Int64(x.count)))
        ember_quantize_activations(at, x, &out, Int64(x.count))
        return out
    }

    /// Row ids: shuffled, with an adjacent run and a repeat, so every grouping case occurs.
    static func rowIds(_ count: Int, of rows: Int, rng: inout Rng) -> [Int32] {
        var ids = (0..<count).map { _ in Int32(rng.next() % UInt64(rows)) }
        if count >= 8 { ids[2] = 5; ids[3] = 6; ids[4] = 7; ids[5] = 8; ids[7] = ids[0] }
        return ids
    }

    /// Runs `body` on every kernel family this CPU has, named for messages.
    func withPaths(_ body: (String) throws -> Void) rethrows {
        for family in KernelFamilies.available { try KernelFamilies.with(family) { try body(family.description) } }
    }

    /// Row lengths per type: a few blocks, plus a length that is no multiple of 8 for floats.
    static func lengths(_ type: Int32) -> [Int] {
        let block = Int(ember_block_size(type))
        return block == 1 ? [256, 100] : [block * max(1, 512 / block)]
    }

    // MARK: Row gather

    func testGatherMatchesDenseMatvecBitForBit() {
        var rng = Rng(state: 1)
        for (type, name) in KernelTests.weightTypes {
            for n in Self.lengths(type) {
                let m = Matrix(type: type, rows: 37, n: n, rng: &rng)
                let act = Self.activations(type, rng.vector(n))
                for count in [1, 3, 4, 13, 37] {
                    let ids = Self.rowIds(count, of: m.rows, rng: &rng)
                    withPaths { path in
                        var dense = [Float](repeating: 0, count: m.rows)
                        var gathered = [Float](repeating: .nan, count: count)
                        ember_matvec(type, Int64(n), m.bytes, m.rowBytes, act, &dense, 0, Int64(m.rows))
                        ember_matvec_gather(type, Int64(n), m.bytes, m.rowBytes, act, ids, Int64(count), &gathered)
                        for k in 0..<count where gathered[k].bitPattern != dense[Int(ids[k])].bitPattern {
                            XCTFail("\(name) \(path) n=\(n) count=\(count): y[\(k)] = \(gathered[k]), row \(ids[k]) dense \(dense[Int(ids[k])])")
                            return
                        }
                    }
                }
            }
        }
    }

    /// The gather goes through the dense tiles on row pointers, four rows at a time on AVX2 for
    /// every type (K-quants and floats included) with shorter tiles for the tail; against the
    /// portable kernels, one row at a time. Both paths are within (n+16)·u·Σ|w·a| of the exact
    /// dot (KernelTests, top), so they may differ by twice that. Counts 1...9 end on every
    /// tail length; rows repeat and run adjacent in places (rowIds).
    func testGatherMatchesPortableKernels() throws {
        try XCTSkipUnless(ember_has_avx2() != 0, "no AVX2 on this CPU: only the portable kernels exist")
        var rng = Rng(state: 6)
        for (type, name) in KernelTests.weightTypes {
            for n in Self.lengths(type) {
                let m = Matrix(type: type, rows: 23, n: n, rng: &rng)
                let act = Self.activations(type, rng.vector(n))
                for count in Array(1...9) + [23] {
                    let ids = Self.rowIds(count, of: m.rows, rng: &rng)
                    var fast = [Float](repeating: .nan, count: count), slow = fast
                    ember_matvec_gather(type, Int64(n), m.bytes, m.rowBytes, act, ids, Int64(count), &fast)
                    ember_force_portable(1)
                    ember_matvec_gather(type, Int64(n), m.bytes, m.rowBytes, act, ids, Int64(count), &slow)
                    ember_force_portable(0)
                    for k in 0..<count {
                        let row = Array(m.bytes[(Int(ids[k]) * m.rowBytes)..<((Int(ids[k]) + 1) * m.rowBytes)])
                        let tol = 2 * Double(n + 16) * Self.u * KernelTests.reference(type, n, row, act).magnitude + 1e-30
                        XCTAssertEqual(Double(fast[k]), Double(slow[k]), accuracy: tol, "\(name) n=\(n) count=\(count) k=\(k)")
                    }
                }
            }
        }
    }

    func testWeightMatrixGatherWrapper() {
        var rng = Rng(state: 2)
        let m = Matrix(type: Int32(EMBER_TYPE_Q4_0), rows: 20, n: 128, rng: &rng)
        m.bytes.withUnsafeBytes { raw in
            let w = m.weightMatrix(raw.baseAddress!)
            let a = ActivationBuffer(type: w.activationType, length: 128, capacity: 1)
            a.store(rng.vector(128), at: 0)
            var dense = [Float](repeating: 0, count: 20), gathered = [Float](repeating: 0, count: 6)
            let ids: [Int32] = [19, 0, 7, 7, 3, 12]
            w.multiply(a.vector(0), into: &dense, rows: 0..<20)
            w.multiply(gathering: ids, count: ids.count, activations: a.vector(0), into: &gathered)
            XCTAssertEqual(gathered, ids.map { dense[Int($0)] })
        }
    }

    // MARK: Column gather

    /// The bound, per output element, of the AVX2 Q4_0 column gather's coefficient rounding
    /// (nothing for other types and paths): within each group of ember_axpy_group rows from the
    /// first and each 32-column block, c_k · d_k is rounded to a multiple of step =
    /// max_k |c_k · d_k| / 127, off by at most half a step (plus a few u from the float
    /// quotient and step) for each of the row's nibbles (|value| / d_k after the -8).
    static func coefficientRounding(_ m: Matrix, ids: [Int32], coef: [Float], path: String) -> [Double] {
        var bound = [Double](repeating: 0, count: m.n)
        guard m.type == Int32(EMBER_TYPE_Q4_0), path != "portable" else { return bound }
        let group = Int(ember_axpy_group(m.type))
        func scale(_ row: Int32, _ block: Int) -> Double {
            let at = Int(row) * m.rowBytes + block * 18
            return Double(Float(Float16(bitPattern: UInt16(m.bytes[at]) | UInt16(m.bytes[at + 1]) << 8)))
        }
        for start in Swift.stride(from: 0, to: ids.count, by: group) {
            let members = start..<min(ids.count, start + group)
            for block in 0..<m.n / 32 {
                let step = members.map { abs(Double(coef[$0]) * scale(ids[$0], block)) }.max()! / 127
                for k in members {
                    let d = abs(scale(ids[k], block))  // Q4_0 scales carry the sign of the block's extreme
                    guard d != 0 else { continue }
                    for i in block * 32..<(block + 1) * 32 {
                        bound[i] += 0.5 * (1 + 1e-5) * step * abs(Double(m.floats[Int(ids[k])][i])) / d
                    }
                }
            }
        }
        return bound
    }

    /// Checks y0 + Σ coef[k] · row ids[k] against a double sum, on both paths.
    func checkAxpy(_ m: Matrix, ids: [Int32], coef: [Float], y0: [Float], label: String) {
        let n = m.n
        var reference = y0.map(Double.init), magnitude = y0.map { abs(Double($0)) }
        for (k, r) in ids.enumerated() {
            let row = m.floats[Int(r)]
            let largest = Double(row.map(abs).max() ?? 0)
            for i in 0..<n {
                reference[i] += Double(coef[k]) * Double(row[i])
                magnitude[i] += abs(Double(coef[k])) * largest
            }
        }
        withPaths { path in
            var y = y0
            ember_axpy_gather(m.type, Int64(n), m.bytes, m.rowBytes, ids, coef, Int64(ids.count), &y)
            let bound = 8 * Self.u * Double(ids.count + 4)
            let rounding = Self.coefficientRounding(m, ids: ids, coef: coef, path: path)
            for i in 0..<n where abs(Double(y[i]) - reference[i]) > bound * magnitude[i] + rounding[i] {
                XCTFail("\(label) \(path): y[\(i)] = \(y[i]), reference \(reference[i]), bound \(bound * magnitude[i] + rounding[i])")
                return
            }
        }
    }

    func testAxpyGatherMatchesFloatReference() {
        var rng = Rng(state: 3)
        for (type, name) in KernelTests.weightTypes {
            for n in Self.lengths(type) {
                let m = Matrix(type: type, rows: 29, n: n, rng: &rng)
                for count in [1, 3, 4, 11, 29] {
                    let ids = Self.rowIds(count, of: m.rows, rng: &rng)
                    let coef = (0..<count).map { _ in rng.float() * 2 }
                    checkAxpy(m, ids: ids, coef: coef, y0: rng.vector(n), label: "\(name) n=\(n) count=\(count)")
                }
            }
        }
    }

    // MARK: Neuron-major transposition

    /// A down projection (d rows x f columns) to transpose, kept alive with its bytes.
    func downMatrix(type: Int32, d: Int, f: Int, rng: inout Rng) -> Matrix {
        Matrix(type: type, rows: d, n: f, rng: &rng)
    }

    func testNeuronMajorDefaultIsQ8_0WithinOneStep() throws {
        var rng = Rng(state: 4)
        let pool1 = ThreadPool(threads: 1), pool2 = ThreadPool(threads: 2)
        for (type, name) in KernelTests.weightTypes {
            let d = 64, f = 512
            let m = downMatrix(type: type, d: d, f: f, rng: &rng)
            try m.bytes.withUnsafeBytes { raw in
                let down = m.weightMatrix(raw.baseAddress!)
                let t = try NeuronMajorMatrix(transposing: down, pool: pool2)
                XCTAssertEqual(t.type, .q8_0)
                XCTAssertEqual(t.rows, f)
                XCTAssertEqual(t.columns, d)
                // Built on one thread: the same bytes.
                let t1 = try NeuronMajorMatrix(transposing: down, pool: pool1)
                XCTAssertEqual(memcmp(t.weights.data, t1.weights.data, t.weights.byteCount), 0, "\(name): 1 vs 2 threads")
                var row = [Float](repeating: 0, count: d)
                for j in 0..<f {
                    t.weights.dequantizeRow(j, into: &row)
                    for b in 0..<(d / 32) {
                        // Q8_0 error: half a step (amax/127) plus 127 times the half-float
                        // rounding of the step (2^-11 relative): under 0.57 of a step.
                        let block = (b * 32..<(b + 1) * 32).map { m.floats[$0][j] }
                        let step = Double(block.map(abs).max()!) / 127
                        for i in 0..<32 where abs(Double(row[b * 32 + i]) - Double(block[i])) > 0.57 * step + 1e-30 {
                            XCTFail("\(name): neuron \(j) element \(b * 32 + i) = \(row[b * 32 + i]), source \(block[i])")
                            return
                        }
                    }
                }
            }
        }
    }

    func testNeuronMajorOtherFormats() throws {
        var rng = Rng(state: 5)
        let pool = ThreadPool(threads: 2)
        // F32 source, d not a multiple of 32: default F16; F32 exact; Q4_0 source kept as Q4_0.
        let m = downMatrix(type: Int32(EMBER_TYPE_F32), d: 40, f: 96, rng: &rng)
        try m.bytes.withUnsafeBytes { raw in
            let down = m.weightMatrix(raw.baseAddress!)
            let half = try NeuronMajorMatrix(transposing: down, pool: pool)
            XCTAssertEqual(half.type, .f16)
            let exact = try NeuronMajorMatrix(transposing: down, as: .f32, pool: pool)
            var row = [Float](repeating: 0, count: 40)
            for j in 0..<96 {
                exact.weights.dequantizeRow(j, into: &row)
                XCTAssertEqual(row, (0..<40).map { m.floats[$0][j] })
                half.weights.dequantizeRow(j, into: &row)
                for i in 0..<40 {
                    XCTAssertEqual(row[i], m.floats[i][j], accuracy: abs(m.floats[i][j]) * 0x1p-11 + 0x1p-24)
                }
            }
            XCTAssertThrowsError(try NeuronMajorMatrix(transposing: down, as: .q8_0, pool: pool))
            XCTAssertThrowsError(try NeuronMajorMatrix(transposing: down, as: .q4_K, pool: pool))
        }
        // Source type kept: every row is the requantized column, as ember_quantize_row makes it.
        let q = downMatrix(type: Int32(EMBER_TYPE_Q4_0), d: 64, f: 64, rng: &rng)
        try q.bytes.withUnsafeBytes { raw in
            let t = try NeuronMajorMatrix(transposing: q.weightMatrix(raw.baseAddress!), as: .q4_0, pool: pool)
            for j in 0..<64 {
                let column = (0..<64).map { q.floats[$0][j] }
                var expected = [UInt8](repeating: 0, count: t.weights.rowBytes)
                ember_quantize_row(Int32(EMBER_TYPE_Q4_0), column, &expected, 64)
                XCTAssertEqual(memcmp(t.weights.data + j * t.weights.rowBytes, expected, expected.count), 0)
            }
        }
    }

    // MARK: Sparse FFN

    /// A small gated FFN: gate and up (f x d), down (d x f) of `type`, and its neuron-major copy.
    final class FFN {
        let d: Int, f: Int
        let gate: Matrix, up: Matrix, down: Matrix
        let storage: [UnsafeMutableRawPointer]
        let gateW: WeightMatrix, upW: WeightMatrix, downW: WeightMatrix
        let neuronMajor: NeuronMajorMatrix

        init(type: Int32, d: Int, f: Int, rng: inout Rng, pool: ThreadPool) throws {
            self.d = d
            self.f = f
            gate = Matrix(type: type, rows: f, n: d, rng: &rng)
            up = Matrix(type: type, rows: f, n: d, rng: &rng)
            down = Matrix(type: type, rows: d, n: f, rng: &rng)
            storage = [gate, up, down].map { m in
                let p = UnsafeMutableRawPointer.allocate(byteCount: m.bytes.count, alignment: 64)
                m.bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: m.bytes.count) }
                return p
            }
            gateW = gate.weightMatrix(storage[0])
            upW = up.weightMatrix(storage[1])
            downW = down.weightMatrix(storage[2])
            neuronMajor = try NeuronMajorMatrix(transposing: downW, pool: pool)
        }

        deinit { storage.forEach { $0.deallocate() } }

        /// act(gate · x + gateBias) · (up · x + upBias) per neuron, from the dense matvecs.
        func hidden(_ x: [Float], activation: VectorKernels.Activation, gated: Bool,
                    gateBias: [Float]? = nil, upBias: [Float]? = nil) -> [Float] {
            let a = ActivationBuffer(type: upW.activationType, length: d, capacity: 1)
            a.store(x, at: 0)
            var g = [Float](repeating: 0, count: f), u = [Float](repeating: 0, count: f)
            gateW.multiply(a.vector(0), into: &g, rows: 0..<f)
            upW.multiply(a.vector(0), into: &u, rows: 0..<f)
            if let gateBias { for j in 0..<f { g[j] += gateBias[j] } }
            if let upBias { for j in 0..<f { u[j] += upBias[j] } }
            var h = [Float](repeating: 0, count: f)
            if gated {
                VectorKernels.gatedActivation(activation, gate: g, up: u, &h, f)
            } else {
                VectorKernels.gatedActivation(activation, gate: u, up: nil, &h, f)
            }
            return h
        }

        func run(pool: ThreadPool, x: [Float], active: [Int32], activation: VectorKernels.Activation, gated: Bool,
                 gateBias: [Float]? = nil, upBias: [Float]? = nil) -> [Float] {
            var y = [Float](repeating: .nan, count: d)
            let workspace = SparseFeedForward.Workspace(threads: pool.threadCount, hiddenLength: d, neuronCount: f)
            SparseFeedForward.run(pool: pool, gate: gated ? gateW : nil, up: upW, down: neuronMajor, activation: activation,
                                  input: x, active: active, count: active.count, output: &y, workspace: workspace,
                                  gateBias: gateBias, upBias: upBias)
            return y
        }
    }

    func testSparseFeedForwardAllActiveMatchesDense() throws {
        var rng = Rng(state: 6)
        let pool = ThreadPool(threads: 2)
        for (type, name) in [(Int32(EMBER_TYPE_Q4_0), "Q4_0"), (Int32(EMBER_TYPE_Q4_K), "Q4_K"), (Int32(EMBER_TYPE_F16), "F16")] {
            let ffn = try FFN(type: type, d: 256, f: 512, rng: &rng, pool: pool)
            let x = rng.vector(256)
            let h = ffn.hidden(x, activation: .silu, gated: true)
            // Dense: down · h with h converted to down's activation format.
            let a = ActivationBuffer(type: ffn.downW.activationType, length: ffn.f, capacity: 1)
            a.store(h, at: 0)
            var dense = [Float](repeating: 0, count: ffn.d)
            ffn.downW.multiply(a.vector(0), into: &dense, rows: 0..<ffn.d)
            let sparse = ffn.run(pool: pool, x: x, active: (0..<Int32(ffn.f)).shuffled(), activation: .silu, gated: true)
            // The two differ by the 8-bit rounding of h (dense; at most 0.57 of a step of its
            // block, as for Q8_0 weights; Q8_K has a float scale: 0.5) and of the neuron-major
            // Q8_0 copy of down (sparse; measured exactly), plus float rounding.
            var hRounding = [Double](repeating: 0, count: ffn.f)
            let block = Int(ember_block_size(ember_activation_type(type)))
            for start in Swift.stride(from: 0, to: ffn.f, by: max(block, 1)) {
                let end = min(ffn.f, start + max(block, 1))
                let step = block == 1 ? 0 : Double(h[start..<end].map(abs).max()!) / 127
                for j in start..<end { hRounding[j] = block == 1 ? 0 : 0.57 * step }
            }
            var row = [Float](repeating: 0, count: ffn.d)
            var bound = [Double](repeating: 0, count: ffn.d)
            for j in 0..<ffn.f {
                ffn.neuronMajor.weights.dequantizeRow(j, into: &row)
                for i in 0..<ffn.d {
                    let w = Double(ffn.down.floats[i][j])
                    bound[i] += abs(w) * hRounding[j] + abs(Double(h[j])) * abs(Double(row[i]) - w)
                        + 1e-5 * abs(w * Double(h[j]))
                }
            }
            for i in 0..<ffn.d where abs(Double(sparse[i]) - Double(dense[i])) > bound[i] {
                XCTFail("\(name): y[\(i)] sparse \(sparse[i]) dense \(dense[i]) bound \(bound[i])")
                break
            }
        }
    }

    /// Random subsets against a masked reference: Σ over active neurons of h_j · (neuron-major
    /// row j) in double; gated and ungated, dReLU, with and without biases (added to the
    /// gathered gate and up values before the activation); 1 and 2 threads.
    func testSparseFeedForwardSubsetsMatchMaskedReference() throws {
        var rng = Rng(state: 7)
        let pools = [ThreadPool(threads: 1), ThreadPool(threads: 2)]
        let ffn = try FFN(type: Int32(EMBER_TYPE_Q4_1), d: 128, f: 320, rng: &rng, pool: pools[1])
        var row = [Float](repeating: 0, count: ffn.d)
        let rows: [[Float]] = (0..<ffn.f).map { j in
            ffn.neuronMajor.weights.dequantizeRow(j, into: &row)
            return row
        }
        let cases: [(VectorKernels.Activation, Bool, Bool)] = [(.silu, true, false), (.relu, false, false), (.gelu, true, false),
                                                                (.drelu, true, false), (.relu, false, true), (.drelu, true, true)]
        for (activation, gated, biased) in cases {
            let gateBias = biased && gated ? rng.vector(ffn.f) : nil, upBias = biased ? rng.vector(ffn.f) : nil
            for fraction in [0.0, 0.03, 0.1, 0.5, 1.0] {
                let x = rng.vector(ffn.d)
                let h = ffn.hidden(x, activation: activation, gated: gated, gateBias: gateBias, upBias: upBias)
                let active = Array((0..<Int32(ffn.f)).shuffled().prefix(Int(Double(ffn.f) * fraction)))
                var reference = [Double](repeating: 0, count: ffn.d), magnitude = reference
                for j in active.map(Int.init) {
                    let largest = Double(rows[j].map(abs).max()!)
                    for i in 0..<ffn.d {
                        reference[i] += Double(h[j]) * Double(rows[j][i])
                        magnitude[i] += abs(Double(h[j])) * largest
                    }
                }
                let results = pools.map {
                    ffn.run(pool: $0, x: x, active: active, activation: activation, gated: gated, gateBias: gateBias, upBias: upBias)
                }
                // The activation may take its vector or scalar path per neuron depending on
                // where a thread's share starts: allow 1e-6 relative on h (a few ulps).
                let bound = 8 * Self.u * Double(active.count + 4) + 1e-6
                for (p, y) in results.enumerated() {
                    for i in 0..<ffn.d where abs(Double(y[i]) - reference[i]) > bound * magnitude[i] {
                        XCTFail("\(activation) gated=\(gated) biased=\(biased) \(fraction) threads=\(p + 1): y[\(i)] = \(y[i]), "
                                + "reference \(reference[i])")
                        break
                    }
                }
            }
        }
    }

    /// The dense down projection of a neuron-major matrix (PowerInfer's `ffn_down_t` in place):
    /// every neuron, several tokens at once, threads splitting the hidden dimension on block
    /// boundaries; against a double-precision sum, with the bound of the column gather above.
    func testDenseColumnGatherMatchesReference() throws {
        var rng = Rng(state: 9)
        let pools = [ThreadPool(threads: 1), ThreadPool(threads: 2)]
        let types: [(Int32, Int)] = [(Int32(EMBER_TYPE_Q4_0), 160), (Int32(EMBER_TYPE_F16), 200), (Int32(EMBER_TYPE_Q8_0), 96),
                                     (Int32(EMBER_TYPE_Q4_K), 512)]
        for (type, d) in types {
            let f = 300, tokens = 3
            let source = Matrix(type: type, rows: f, n: d, rng: &rng)
            let activations = (0..<tokens).map { _ in rng.vector(f) }
            try source.bytes.withUnsafeBytes { raw in
                let down = NeuronMajorMatrix(inPlace: source.weightMatrix(raw.baseAddress!))
                let ids = Array(0..<Int32(f)), flat = activations.flatMap { $0 }
                let largest = source.floats.map { Double($0.map(abs).max()!) }
                // Tiles of 64 neurons, a multiple of the group: the groups of one call over all.
                let rounding = activations.map {
                    Self.coefficientRounding(source, ids: ids, coef: $0, path: ember_has_avx2() != 0 ? "AVX2" : "portable")
                }
                for pool in pools {
                    var y = [Float](repeating: .nan, count: tokens * (d + 8))
                    SparseFeedForward.dense(pool: pool, down: down, neurons: ids, activations: flat, activationStride: f,
                                            tokens: tokens, output: &y, outputStride: d + 8)
                    for t in 0..<tokens {
                        for i in 0..<d {
                            var reference = 0.0, magnitude = 0.0
                            for j in 0..<f {
                                reference += Double(activations[t][j]) * Double(source.floats[j][i])
                                magnitude += abs(Double(activations[t][j])) * largest[j]
                            }
                            let bound = 8 * Self.u * Double(f + 4) * magnitude + rounding[t][i]
                            if !(abs(Double(y[t * (d + 8) + i]) - reference) <= bound) {
                                XCTFail("type \(type) threads \(pool.threadCount) token \(t): y[\(i)] = \(y[t * (d + 8) + i]), "
                                        + "reference \(reference)")
                                return
                            }
                        }
                    }
                }
            }
        }
    }

    /// Threads own output columns and add the neurons in list order, so the result is the
    /// single-call accumulation's bits at any thread count (no tolerance needed).
    func testSparseDownOnlyMatchesReferenceAtAnyThreadCount() throws {
        var rng = Rng(state: 8)
        let ffn = try FFN(type: Int32(EMBER_TYPE_Q8_0), d: 224, f: 256, rng: &rng, pool: ThreadPool(threads: 2))
        let ids: [Int32] = Array((0..<Int32(256)).shuffled().prefix(77))
        let coef = (0..<77).map { _ in rng.float() }
        var expected = [Float](repeating: 0, count: 224)
        ffn.neuronMajor.accumulate(rows: ids, coefficients: coef, count: 77, into: &expected)
        for threads in 1...3 {
            var y = [Float](repeating: .nan, count: 224)
            SparseFeedForward.runDown(pool: ThreadPool(threads: threads), down: ffn.neuronMajor, rows: ids,
                                      coefficients: coef, count: 77, output: &y)
            XCTAssertEqual(y, expected, "\(threads) threads")
        }
    }
    /// The whole sparse FFN (gate and up gathered by neuron shares, SiLU/GELU, down by column
    /// shares) gives the same bits at 1, 2 and 3 threads: the activations' vector code covers
    /// the tails of the shares too, so a neuron's value does not depend on where a share ends.
    func testSparseFeedForwardIsTheSameAtAnyThreadCount() throws {
        var rng = Rng(state: 12)
        for (type, activation) in [(Int32(EMBER_TYPE_Q4_0), VectorKernels.Activation.silu), (Int32(EMBER_TYPE_Q8_0), .gelu)] {
            let ffn = try FFN(type: type, d: 256, f: 512, rng: &rng, pool: ThreadPool(threads: 1))
            let x = rng.vector(256)
            // 93 neurons: shares of 93, 47/46 and 31 each, none a multiple of 8.
            let active = Array((0..<Int32(512)).shuffled().prefix(93)).sorted()
            let one = ffn.run(pool: ThreadPool(threads: 1), x: x, active: active, activation: activation, gated: true)
            for threads in 2...3 {
                XCTAssertEqual(ffn.run(pool: ThreadPool(threads: threads), x: x, active: active, activation: activation, gated: true),
                               one, "\(activation) at \(threads) threads")
            }
        }
    }

    /// An activation's value for an element does not depend on the range it is computed in.
    func testGatedActivationIsTheSameWhereverARangeEnds() {
        var rng = Rng(state: 13)
        let gate = rng.vector(37), up = rng.vector(37)
        for activation in [VectorKernels.Activation.silu, .gelu, .relu] {
            var whole = [Float](repeating: 0, count: 37)
            VectorKernels.gatedActivation(activation, gate: gate, up: up, &whole, 37)
            for split in [1, 5, 8, 13, 30] {
                var pieces = [Float](repeating: 0, count: 37)
                gate.withUnsafeBufferPointer { g in
                    up.withUnsafeBufferPointer { u in
                        pieces.withUnsafeMutableBufferPointer { o in
                            VectorKernels.gatedActivation(activation, gate: g.baseAddress!, up: u.baseAddress!, o.baseAddress!, split)
                            VectorKernels.gatedActivation(activation, gate: g.baseAddress! + split, up: u.baseAddress! + split,
                                                          o.baseAddress! + split, 37 - split)
                        }
                    }
                }
                XCTAssertEqual(pieces, whole, "\(activation) split at \(split)")
            }
        }
    }
}
