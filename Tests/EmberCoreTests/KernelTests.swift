import XCTest
import CEmberKernels
@testable import EmberCore

/// Tests of the C kernels (CEmberKernels) on generated data, for every weight type.
///
/// Tolerance conventions used below:
/// - u = 2^-24 is the float32 unit roundoff. Summing k float products in any order has error
///   at most about k·u·Σ|terms| (the standard recursive summation bound). The kernels form
///   each block's integer sum exactly, then do a few float multiplies and one add per block,
///   so k ≤ n + 16 covers both the portable path (sequential over up to n elements for float
///   types) and the AVX2 path (8 lanes, fewer additions each).
/// - The full-float comparison bounds the effect of quantizing activations to 8 bits: each
///   activation moves by at most half its block's step, plus the half-float rounding of the
///   stored scale applied to |q| ≤ 127 (127·2^-11 ≈ 0.062 of a step).
final class KernelTests: XCTestCase {

    // MARK: Helpers

    /// All weight types with kernels, with their names for messages.
    static let weightTypes: [(Int32, String)] = [
        (Int32(EMBER_TYPE_F32), "F32"), (Int32(EMBER_TYPE_F16), "F16"), (Int32(EMBER_TYPE_BF16), "BF16"),
        (Int32(EMBER_TYPE_Q8_0), "Q8_0"), (Int32(EMBER_TYPE_Q4_0), "Q4_0"), (Int32(EMBER_TYPE_Q4_1), "Q4_1"),
        (Int32(EMBER_TYPE_Q5_0), "Q5_0"), (Int32(EMBER_TYPE_Q5_1), "Q5_1"), (Int32(EMBER_TYPE_Q4_K), "Q4_K"),
        (Int32(EMBER_TYPE_Q5_K), "Q5_K"), (Int32(EMBER_TYPE_Q6_K), "Q6_K"),
    ]

    static let u = Double(Float.ulpOfOne) / 2  // 2^-24

    /// A seeded generator so every run sees the same data.
    struct Rng {
        var generator: SplitMix64
        init(state: UInt64) { generator = SplitMix64(seed: state) }
        mutating func next() -> UInt64 { generator.next() }
        /// Uniform in [-1, 1).
        mutating func float() -> Float { Float(Double(next() >> 11) * 0x1p-53 * 2 - 1) }
        /// Values with varying magnitude per 32-element stretch and an occasional offset, so
        /// blocks differ in scale and some are one-signed (exercises the mins of Q4_1/Q4_K).
        mutating func vector(_ n: Int) -> [Float] {
            var out = [Float](repeating: 0, count: n)
            var i = 0
            while i < n {
                let scale = Float(0.05 + 2 * Double(next() % 1000) / 1000)
                let offset = next() % 4 == 0 ? scale * float() : 0
                for j in i..<min(i + 32, n) { out[j] = scale * float() + offset }
                i += 32
            }
            return out
        }
    }

    func quantize(_ type: Int32, _ x: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: ember_row_bytes(type, Int64(x.count)))
        ember_quantize_row(type, x, &out, Int64(x.count))
        return out
    }

    static func dequantize(_ type: Int32, _ bytes: [UInt8], _ n: Int) -> [Float] {
        var out = [Float](repeating: 0, count: n)
        ember_dequantize_row(type, bytes, &out, Int64(n))
        return out
    }

    func activations(_ weightType: Int32, _ x: [Float]) -> [UInt8] {
        let at = ember_activation_type(weightType)
        var out = [UInt8](repeating: 0, count: ember_activation_bytes(at, Int64(x.count)))
        ember_quantize_activations(at, x, &out, Int64(x.count))
        return out
    }

    func dot(_ type: Int32, _ n: Int, _ w: [UInt8], _ a: [UInt8], portable: Bool = false) -> Float {
        if portable { ember_force_portable(1) }
        defer { ember_force_portable(0) }
        return ember_dot(type, Int64(n), w, a)
    }

    static func half(_ bytes: [UInt8], _ offset: Int) -> Double {
        Double(Float(Float16(bitPattern: UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)))
    }

    // MARK: (1) Round trip

    /// Largest allowed |x - dequant(quant(x))| for each element of a block, from the format's
    /// step size. Factor 1.01 absorbs float rounding in the bound itself.
    func roundTripBound(_ type: Int32, _ x: [Float]) -> [Double] {
        let n = x.count
        var bound = [Double](repeating: 0, count: n)
        func blocks(_ size: Int, _ body: (ArraySlice<Float>, Range<Int>) -> Void) {
            for b in stride(from: 0, to: n, by: size) { body(x[b..<b + size], b..<b + size) }
        }
        let amax = { (s: ArraySlice<Float>) in Double(s.map { abs($0) }.max()!) }
        switch Int(type) {
        case EMBER_TYPE_F32:
            break
        case EMBER_TYPE_F16:  // half rounding: 2^-11 relative, 2^-25 absolute for subnormals
            for i in 0..<n { bound[i] = Double(abs(x[i])) * 0x1p-11 + 0x1p-25 }
        case EMBER_TYPE_BF16:  // 8-bit significand: 2^-8 relative
            for i in 0..<n { bound[i] = Double(abs(x[i])) * 0x1p-8 }
        case EMBER_TYPE_Q8_0:  // step amax/127: half a step + half rounding of d times |q| ≤ 127
            blocks(32) { s, r in for i in r { bound[i] = amax(s) / 127 * (0.5 + 127 * 0x1p-11) * 1.01 } }
        case EMBER_TYPE_Q4_0, EMBER_TYPE_Q5_0:
            // d = max/-L (L = 8 or 16) maps the largest value to level -L exactly; a value of
            // the opposite sign and equal size would need level +L and is clamped to L-1: one
            // full step. Plus half rounding of d over up to L levels.
            let levels = type == EMBER_TYPE_Q4_0 ? 8.0 : 16.0
            blocks(32) { s, r in
                let step = amax(s) / levels
                for i in r { bound[i] = step * (1 + levels * 0x1p-11) * 1.01 }
            }
        case EMBER_TYPE_Q4_1, EMBER_TYPE_Q5_1:
            // Levels m + q·d over [min, max]: half a step, plus the half rounding of m and of d
            // (d's error grows over up to L levels).
            let levels = type == EMBER_TYPE_Q4_1 ? 15.0 : 31.0
            blocks(32) { s, r in
                let lo = Double(s.min()!), hi = Double(s.max()!)
                let step = (hi - lo) / levels
                for i in r { bound[i] = (0.5 * step + abs(lo) * 0x1p-11 + (hi - lo) * 0x1p-11 * 2) * 1.01 }
            }
        case EMBER_TYPE_Q4_K, EMBER_TYPE_Q5_K:
            // Sub-block j: offset rounded up by at most dmin ≤ A/63 (A = super-block max |x|,
            // rounded up to a half: ×(1+2^-10)), scale (range_j + dmin)/L rounded up by at most
            // d ≤ (2A + dmin)/(63 L). Error ≤ half the effective step.
            let levels = type == EMBER_TYPE_Q4_K ? 15.0 : 31.0
            blocks(256) { s, r in
                let a = amax(s)
                let dmin = a / 63 * (1 + 0x1p-10)
                let d = (2 * a + dmin) / (63 * levels) * (1 + 0x1p-10)
                for j in 0..<8 {
                    let sub = s[(r.lowerBound + 32 * j)..<(r.lowerBound + 32 * j + 32)]
                    let lo = min(Double(sub.min()!), 0), hi = max(Double(sub.max()!), lo)
                    let step = (hi - lo + dmin) / levels + d
                    for i in sub.indices { bound[i] = 0.5 * step * 1.01 }
                }
            }
        case EMBER_TYPE_Q6_K:
            // Group g of 16: scale amax_g/31 rounded up by at most d ≤ A/(31·127) (×(1+2^-10)).
            blocks(256) { s, r in
                let d = amax(s) / (31 * 127) * (1 + 0x1p-10)
                for g in 0..<16 {
                    let grp = s[(r.lowerBound + 16 * g)..<(r.lowerBound + 16 * g + 16)]
                    for i in grp.indices { bound[i] = 0.5 * (amax(grp) / 31 + d) * 1.01 }
                }
            }
        default:
            XCTFail("no bound for type \(type)")
        }
        return bound
    }

    func testRoundTripWithinStepBounds() {
        var rng = Rng(state: 1)
        for (type, name) in Self.weightTypes {
            for n in [256, 512, 4096] {
                let x = rng.vector(n)
                let y = Self.dequantize(type, quantize(type, x), n)
                let bound = roundTripBound(type, x)
                var worst = 0
                for i in 0..<n where abs(Double(y[i]) - Double(x[i])) > bound[i] { worst += 1 }
                XCTAssertEqual(worst, 0, "\(name) n=\(n): \(worst) elements outside the step bound")
            }
        }
    }

    // MARK: (2) Dot against references

    /// Σ w·a in double from dequantized weights and dequantized activations, with Σ|w·a|.
    /// For Q4_1/Q5_1 the kernel uses Q8_1's stored s = half(d·Σq) for the min term instead of
    /// d·Σq (the one value not visible in the dequantized activations), so the reference adds
    /// m·(s - d·Σq) per block to model exactly that.
    static func reference(_ type: Int32, _ n: Int, _ w: [UInt8], _ a: [UInt8]) -> (value: Double, magnitude: Double) {
        let at = ember_activation_type(type)
        let wf = Self.dequantize(type, w, n), af = Self.dequantize(at, a, n)
        var sum = 0.0, mag = 0.0
        for i in 0..<n {
            sum += Double(wf[i]) * Double(af[i])
            mag += abs(Double(wf[i]) * Double(af[i]))
        }
        if type == EMBER_TYPE_Q4_1 || type == EMBER_TYPE_Q5_1 {
            let wb = Int(ember_block_bytes(type))
            for b in 0..<(n / 32) {
                let m = Self.half(w, b * wb + 2)           // block_q4_1/q5_1: d, m, ...
                let d = Self.half(a, b * 36), s = Self.half(a, b * 36 + 2)  // block_q8_1: d, s, qs
                let qsum = (0..<32).reduce(0.0) { $0 + Double(Int8(bitPattern: a[b * 36 + 4 + $1])) }
                sum += m * (s - Double(Float(d * qsum)))
                mag += abs(m * s)
            }
        }
        return (sum, mag)
    }

    /// Bound on |Σ w·x - Σ w·dequant(quant(x))| from the activation step sizes.
    func activationErrorBound(_ type: Int32, _ wf: [Float], _ x: [Float]) -> Double {
        let at = Int(ember_activation_type(type))
        if at == EMBER_TYPE_F32 { return 0 }
        let block = at == EMBER_TYPE_Q8_K ? 256 : 32
        // Q8_K keeps d in f32: only half a step. Q8_0/Q8_1 also round d to a half.
        let perStep = at == EMBER_TYPE_Q8_K ? 0.5 : 0.5 + 127 * 0x1p-11
        var bound = 0.0
        for b in stride(from: 0, to: x.count, by: block) {
            let amax = Double(x[b..<b + block].map { abs($0) }.max()!)
            let e = amax / 127 * perStep * 1.01
            for i in b..<b + block { bound += abs(Double(wf[i])) * e }
        }
        return bound
    }

    func testDotMatchesReferences() {
        var rng = Rng(state: 2)
        for (type, name) in Self.weightTypes {
            for n in [256, 512, 4096] {
                let xw = rng.vector(n), x = rng.vector(n)
                let w = quantize(type, xw), a = activations(type, x)
                let ref = Self.reference(type, n, w, a)
                let tol = Double(n + 16) * Self.u * ref.magnitude + 1e-30
                for portable in [false, true] {
                    let got = Double(dot(type, n, w, a, portable: portable))
                    XCTAssertEqual(got, ref.value, accuracy: tol, "\(name) n=\(n) portable=\(portable)")
                }
                // Against the exact float dot of dequantized weights with the original x.
                let wf = Self.dequantize(type, w, n)
                var exact = 0.0
                for i in 0..<n { exact += Double(wf[i]) * Double(x[i]) }
                let bound = activationErrorBound(type, wf, x) + tol
                XCTAssertEqual(Double(dot(type, n, w, a)), exact, accuracy: bound, "\(name) n=\(n) vs float")
            }
        }
    }

    // MARK: (3) AVX2 against portable

    func testAVX2MatchesPortable() throws {
        try XCTSkipUnless(ember_has_avx2() != 0, "no AVX2 on this CPU")
        var rng = Rng(state: 3)
        for (type, name) in Self.weightTypes {
            for n in [256, 512, 4096] {
                for _ in 0..<3 {
                    let w = quantize(type, rng.vector(n)), a = activations(type, rng.vector(n))
                    // Both paths are within (n+16)·u·Σ|terms| of the exact value (see top).
                    let tol = 2 * Double(n + 16) * Self.u * Self.reference(type, n, w, a).magnitude + 1e-30
                    let fast = Double(dot(type, n, w, a)), slow = Double(dot(type, n, w, a, portable: true))
                    XCTAssertEqual(fast, slow, accuracy: tol, "\(name) n=\(n)")
                }
            }
        }
    }

    /// The AVX-512 VNNI kernels are the AVX2 code with one-instruction integer dots: the same
    /// exact integer sums and the same float steps, so every product must equal the AVX2 one
    /// bit for bit (this is what lets a CPU's best family be chosen without changing any
    /// output). Checked on every path: dot, matvec, matmul on the tiles and the repacked 8-row
    /// kernels (21 rows: two bands and a tail), and both gathers; on random data and on the
    /// extreme levels where the AVX2 form's 16-bit pair sums come closest to saturating.
    func testVNNIEqualsAVX2BitForBit() throws {
        try XCTSkipUnless(KernelFamily.best == .avx512VNNI, "this CPU has no AVX-512 VNNI (best: \(KernelFamily.best))")
        var rng = Rng(state: 9)
        let rows = 21, maxCols = 13
        let paths: [Int32] = [Int32(EMBER_MATMUL_AUTO), Int32(EMBER_MATMUL_TILES), Int32(EMBER_MATMUL_REPACKED)]
        let ids: [Int32] = [20, 3, 4, 5, 6, 0, 17, 9, 9, 12, 1]
        for (type, name) in Self.weightTypes {
            for n in [256, 4096] {
                for extreme in [false, true] {
                    let row = (0..<n).map { $0 % 32 == 0 ? Float(-1) : 1 }
                    var w = [UInt8]()
                    for _ in 0..<rows { w += quantize(type, extreme ? row : rng.vector(n)) }
                    let rb = ember_row_bytes(type, Int64(n)), at = ember_activation_type(type)
                    let stride = (ember_activation_bytes(at, Int64(n)) + 63) / 64 * 64
                    var acts = [UInt8](repeating: 0, count: stride * maxCols)
                    for c in 0..<maxCols {
                        let x = extreme ? (0..<n).map { ($0 + c) % 3 == 0 ? Float(-1) : 1 } : rng.vector(n)
                        acts.withUnsafeMutableBytes { ember_quantize_activations(at, x, $0.baseAddress! + c * stride, Int64(n)) }
                    }
                    // Every output of every path, in one array per family.
                    func outputs() -> [Float] {
                        var all = [Float]()
                        w.withUnsafeBytes { wp in acts.withUnsafeBytes { ap in
                            let wb = wp.baseAddress!, ab = ap.baseAddress!
                            var y = [Float](repeating: 0, count: rows * maxCols)
                            ember_matvec(type, Int64(n), wb, rb, ab, &y, 0, Int64(rows))
                            all += y[0..<rows]
                            for cols in [1, 2, 3, 4, 5, 6, 8, 9, 13] {
                                for path in paths {
                                    ember_matmul_path(type, Int64(n), wb, rb, ab, stride, Int64(cols), &y, Int64(rows), 0, Int64(rows), path)
                                    all += y[0..<rows * cols]
                                }
                            }
                            ember_matvec_gather(type, Int64(n), wb, rb, ab, ids, Int64(ids.count), &y)
                            all += y[0..<ids.count]
                            ember_matmul_gather(type, Int64(n), wb, rb, ab, stride, 5, ids, Int64(ids.count), &y, Int64(ids.count))
                            all += y[0..<ids.count * 5]
                        } }
                        return all
                    }
                    let vnni = KernelFamilies.with(.avx512VNNI, outputs), avx2 = KernelFamilies.with(.avx2, outputs)
                    let differing = zip(vnni, avx2).filter { $0.bitPattern != $1.bitPattern }.count
                    XCTAssertEqual(differing, 0, "\(name) n=\(n) extreme=\(extreme): \(differing) of \(vnni.count) outputs differ")
                }
            }
        }
    }

    // MARK: (4) Matvec and matmul against ember_dot

    /// Every tile shape performs the same operations per (row, column) in the same order as
    /// the 1x1 tile ember_dot uses, so matvec results must be identical, not merely close.
    /// Matmul also uses a repacked 8-row path (quantized types, AVX2), which must give the same
    /// bits too: same integer sum per block, same float steps in the same order.
    func testMatvecAndMatmulEqualRepeatedDot() {
        var rng = Rng(state: 4)
        let rows = 13, n = 512
        for family in KernelFamilies.available {
            KernelFamily.limit(to: family)
            defer { KernelFamily.limit(to: nil) }
            for (type, name) in Self.weightTypes {
                let rb = ember_row_bytes(type, Int64(n))
                var w = [UInt8]()
                for _ in 0..<rows { w += quantize(type, rng.vector(n)) }
                let at = ember_activation_type(type)
                let stride = (ember_activation_bytes(at, Int64(n)) + 63) / 64 * 64
                let maxCols = 13
                var acts = [UInt8](repeating: 0, count: stride * maxCols)
                for c in 0..<maxCols {
                    let x = rng.vector(n)
                    acts.withUnsafeMutableBytes { ember_quantize_activations(at, x, $0.baseAddress! + c * stride, Int64(n)) }
                }
                let expected: [[Float]] = (0..<maxCols).map { c in
                    (0..<rows).map { r in
                        w.withUnsafeBytes { wp in acts.withUnsafeBytes { ap in
                            ember_dot(type, Int64(n), wp.baseAddress! + r * rb, ap.baseAddress! + c * stride)
                        } }
                    }
                }
                for range in [0..<rows, 3..<10, 5..<6, 12..<13] {
                    var y = [Float](repeating: .nan, count: range.count)
                    w.withUnsafeBytes { wp in acts.withUnsafeBytes { ap in
                        ember_matvec(type, Int64(n), wp.baseAddress!, rb, ap.baseAddress!, &y,
                                     Int64(range.lowerBound), Int64(range.upperBound))
                    } }
                    XCTAssertEqual(y, Array(expected[0][range]), "\(name) matvec \(range) \(family)")
                }
                // Every path (the tiles, or weights repacked 8 rows at a time) gives each
                // (row, column) the bits of ember_dot: one arithmetic whatever the column count.
                let paths: [(Int32, String)] = [(Int32(EMBER_MATMUL_AUTO), "auto"), (Int32(EMBER_MATMUL_TILES), "tiles"),
                                                (Int32(EMBER_MATMUL_REPACKED), "repacked")]
                for cols in [1, 3, 4, 5, 8, 13] {
                    for range in [0..<rows, 2..<11] {
                        for (path, pathName) in paths {
                            let ldy = rows + 3  // padding must stay untouched
                            var y = [Float](repeating: -7, count: ldy * cols)
                            w.withUnsafeBytes { wp in acts.withUnsafeBytes { ap in
                                ember_matmul_path(type, Int64(n), wp.baseAddress!, rb, ap.baseAddress!, stride, Int64(cols),
                                                  &y, Int64(ldy), Int64(range.lowerBound), Int64(range.upperBound), path)
                            } }
                            for c in 0..<cols {
                                for r in 0..<ldy {
                                    let what = "\(name) matmul \(pathName) cols=\(cols) \(range) r=\(r) c=\(c) \(family)"
                                    XCTAssertEqual(y[c * ldy + r], range.contains(r) ? expected[c][r] : -7, what)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Largest quants against largest activations: the kernels keep partial sums in int16
    /// over a few steps (see dot_avx2.c / gemm_avx2.c for the bounds). Weights are +1 except
    /// -1 at the start of each 32, which drives nearly every quant to its extreme level
    /// (15 for Q4, 31 for Q5, 63 for Q6_K, ±127 for Q8_0); activations are all 1 (q = ±127).
    func testExtremeQuantsDoNotOverflow() {
        let n = 512, rows = 9, cols = 8
        let row = (0..<n).map { $0 % 32 == 0 ? Float(-1) : 1 }
        for family in KernelFamilies.available {
            KernelFamilies.with(family) { extremeQuants(n: n, rows: rows, cols: cols, row: row, family: family) }
        }
    }

    func extremeQuants(n: Int, rows: Int, cols: Int, row: [Float], family: KernelFamily) {
        for (type, name) in Self.weightTypes {
            let w = (0..<rows).flatMap { _ in quantize(type, row) }
            let a1 = activations(type, [Float](repeating: 1, count: n))
            let at = ember_activation_type(type)
            var acts = [UInt8]()
            for _ in 0..<cols { acts += a1 }
            let ref = Self.reference(type, n, Array(w[0..<ember_row_bytes(type, Int64(n))]), a1)
            let tol = 2 * Double(n + 16) * Self.u * ref.magnitude + 1e-30
            var y = [Float](repeating: 0, count: rows * cols)
            ember_matmul(type, Int64(n), w, ember_row_bytes(type, Int64(n)), acts,
                         ember_activation_bytes(at, Int64(n)), Int64(cols), &y, Int64(rows), 0, Int64(rows))
            for v in y { XCTAssertEqual(Double(v), ref.value, accuracy: tol, "\(name) matmul \(family)") }
            var yv = [Float](repeating: 0, count: rows)
            ember_matvec(type, Int64(n), w, ember_row_bytes(type, Int64(n)), a1, &yv, 0, Int64(rows))
            for v in yv { XCTAssertEqual(Double(v), ref.value, accuracy: tol, "\(name) matvec \(family)") }
        }
    }

    // MARK: (5) Hand-built blocks against the format definitions

    func testF16AndBF16KnownValues() {
        let f16: [UInt16] = [0x3C00, 0xC000, 0x0001, 0x7BFF, 0x3555, 0x8000]
        let f16Want: [Float] = [1, -2, 0x1p-24, 65504, 0.333251953125, -0.0]
        var out = [Float](repeating: 0, count: 6)
        f16.withUnsafeBytes { ember_dequantize_row(Int32(EMBER_TYPE_F16), $0.baseAddress!, &out, 6) }
        XCTAssertEqual(out, f16Want)
        let bf16: [UInt16] = [0x3F80, 0xC0A0, 0x3EAB]
        var out2 = [Float](repeating: 0, count: 3)
        bf16.withUnsafeBytes { ember_dequantize_row(Int32(EMBER_TYPE_BF16), $0.baseAddress!, &out2, 3) }
        XCTAssertEqual(out2, [1, -5, 0.333984375])
        // Quantizing rounds to nearest even: 1 + 2^-11 is halfway between halves 1 and 1+2^-10.
        var h = [UInt8](repeating: 0, count: 4)
        ember_quantize_row(Int32(EMBER_TYPE_F16), [1 + 0x1p-11, 1 + 3 * 0x1p-11], &h, 2)
        XCTAssertEqual(h, [0x00, 0x3C, 0x02, 0x3C])
    }

    func testQ4_0KnownBlock() {
        // block_q4_0: half d = 0.5 (0x3800), qs[j] = element j (low nibble) | element j+16 (high).
        var block: [UInt8] = [0x00, 0x38]
        for j in 0..<16 { block.append(UInt8(j | (15 - j) << 4)) }
        let y = Self.dequantize(Int32(EMBER_TYPE_Q4_0), block, 32)
        for j in 0..<16 {
            XCTAssertEqual(y[j], Float(j - 8) * 0.5)
            XCTAssertEqual(y[j + 16], Float(7 - j) * 0.5)
        }
    }

    func testQ4_1KnownBlock() {
        // block_q4_1: d = 0.25 (0x3400), m = -1 (0xBC00), x = q·d + m.
        var block: [UInt8] = [0x00, 0x34, 0x00, 0xBC]
        for j in 0..<16 { block.append(UInt8(j | (15 - j) << 4)) }
        let y = Self.dequantize(Int32(EMBER_TYPE_Q4_1), block, 32)
        for j in 0..<16 {
            XCTAssertEqual(y[j], Float(j) * 0.25 - 1)
            XCTAssertEqual(y[j + 16], Float(15 - j) * 0.25 - 1)
        }
    }

    func testQ5KnownBlocks() {
        // block_q5_0: d = 1 (0x3C00), qh = 0xAAAA5555 little-endian (bit j = 5th bit of
        // element j), then nibbles; x = (q - 16)·d. Element j < 16 has bit j = 1 iff j even;
        // element j+16 has bit j+16 = 1 iff j odd.
        var block: [UInt8] = [0x00, 0x3C, 0x55, 0x55, 0xAA, 0xAA]
        for j in 0..<16 { block.append(UInt8(j | (15 - j) << 4)) }
        let y = Self.dequantize(Int32(EMBER_TYPE_Q5_0), block, 32)
        for j in 0..<16 {
            XCTAssertEqual(y[j], Float(j + (j % 2 == 0 ? 16 : 0) - 16))
            XCTAssertEqual(y[j + 16], Float(15 - j + (j % 2 == 1 ? 16 : 0) - 16))
        }
        // block_q5_1: d = 0.5, m = 2, same qh and nibbles; x = q·d + m.
        var block1: [UInt8] = [0x00, 0x38, 0x00, 0x40, 0x55, 0x55, 0xAA, 0xAA]
        for j in 0..<16 { block1.append(UInt8(j | (15 - j) << 4)) }
        let y1 = Self.dequantize(Int32(EMBER_TYPE_Q5_1), block1, 32)
        for j in 0..<16 {
            XCTAssertEqual(y1[j], Float(j + (j % 2 == 0 ? 16 : 0)) * 0.5 + 2)
            XCTAssertEqual(y1[j + 16], Float(15 - j + (j % 2 == 1 ? 16 : 0)) * 0.5 + 2)
        }
    }

    func testQ8_0KnownBlock() {
        var block: [UInt8] = [0x00, 0x40]  // d = 2
        for j in 0..<32 { block.append(UInt8(bitPattern: Int8(j - 16))) }
        XCTAssertEqual(Self.dequantize(Int32(EMBER_TYPE_Q8_0), block, 32), (0..<32).map { Float($0 - 16) * 2 })
    }

    /// The 12 scale bytes shared by the Q4_K and Q5_K tests, packed by hand from
    /// scales = [1, 2, 3, 4, 40, 50, 60, 63], mins = [5, 6, 7, 8, 33, 17, 0, 62]:
    /// bytes 0-3: scale j (6 bits) | top 2 bits of scale j+4 in bits 6-7,
    /// bytes 4-7: min j (6 bits) | top 2 bits of min j+4 in bits 6-7,
    /// bytes 8-11: low 4 bits of scale j+4 | low 4 bits of min j+4 << 4.
    /// E.g. scale 4 = 40 = 0b10_1000: byte 0 = 1 | 0b10 << 6 = 0x81, byte 8 low nibble 8.
    static let kScales: [UInt8] = [0x81, 0xC2, 0xC3, 0xC4, 0x85, 0x46, 0x07, 0xC8, 0x18, 0x12, 0x0C, 0xEF]
    static let kScaleValues: [Float] = [1, 2, 3, 4, 40, 50, 60, 63]
    static let kMinValues: [Float] = [5, 6, 7, 8, 33, 17, 0, 62]

    func testQ4_KKnownBlock() {
        // block_q4_K: d = 1 (0x3C00), dmin = 0.5 (0x3800), scales[12], qs[128]. Chunk c (32
        // bytes) holds sub-block 2c in low nibbles and 2c+1 in high nibbles.
        // x = d·scale_j·q - dmin·min_j.
        var block: [UInt8] = [0x00, 0x3C, 0x00, 0x38] + Self.kScales
        for c in 0..<4 { for l in 0..<32 { block.append(UInt8((l + c) & 15 | ((3 * l + c) & 15) << 4)) } }
        let y = Self.dequantize(Int32(EMBER_TYPE_Q4_K), block, 256)
        for c in 0..<4 {
            for l in 0..<32 {
                let j0 = 2 * c, j1 = 2 * c + 1
                XCTAssertEqual(y[64 * c + l], Self.kScaleValues[j0] * Float((l + c) & 15) - 0.5 * Self.kMinValues[j0])
                XCTAssertEqual(y[64 * c + 32 + l], Self.kScaleValues[j1] * Float((3 * l + c) & 15) - 0.5 * Self.kMinValues[j1])
            }
        }
    }

    func testQ5_KKnownBlock() {
        // block_q5_K: as Q4_K plus qh[32] before qs: element 32·j + l takes bit j of qh[l].
        // qh[l] = l·37 mod 256 gives a varied bit pattern.
        var block: [UInt8] = [0x00, 0x3C, 0x00, 0x38] + Self.kScales
        for l in 0..<32 { block.append(UInt8((l * 37) & 255)) }
        for c in 0..<4 { for l in 0..<32 { block.append(UInt8((l + c) & 15 | ((3 * l + c) & 15) << 4)) } }
        let y = Self.dequantize(Int32(EMBER_TYPE_Q5_K), block, 256)
        for c in 0..<4 {
            for l in 0..<32 {
                let j0 = 2 * c, j1 = 2 * c + 1
                let h0 = ((l * 37) >> j0) & 1, h1 = ((l * 37) >> j1) & 1
                XCTAssertEqual(y[64 * c + l], Self.kScaleValues[j0] * Float((l + c) & 15 + 16 * h0) - 0.5 * Self.kMinValues[j0])
                XCTAssertEqual(y[64 * c + 32 + l], Self.kScaleValues[j1] * Float((3 * l + c) & 15 + 16 * h1) - 0.5 * Self.kMinValues[j1])
            }
        }
    }

    func testQ6_KKnownBlock() {
        // block_q6_K: ql[128], qh[64], int8 scales[16], half d. Built from quants q_e
        // (0..63) as the format defines: for half h (128 elements) and l < 32,
        // element l: ql[l] low | qh[l] bits 0-1; l+32: ql[l+32] low | qh bits 2-3;
        // l+64: ql[l] high | qh bits 4-5; l+96: ql[l+32] high | qh bits 6-7 (ql, qh offset
        // by 64 and 32 per half). x = d·scale[e/16]·(q_e - 32).
        let q = (0..<256).map { ($0 * 7 + 3) % 64 }
        var ql = [UInt8](repeating: 0, count: 128), qh = [UInt8](repeating: 0, count: 64)
        for h in 0..<2 {
            for l in 0..<32 {
                let e = 128 * h + l
                ql[64 * h + l] = UInt8(q[e] & 15 | (q[e + 64] & 15) << 4)
                ql[64 * h + l + 32] = UInt8(q[e + 32] & 15 | (q[e + 96] & 15) << 4)
                qh[32 * h + l] = UInt8(q[e] >> 4 | (q[e + 32] >> 4) << 2 | (q[e + 64] >> 4) << 4 | (q[e + 96] >> 4) << 6)
            }
        }
        let scales = (0..<16).map { Int8($0 * 9 - 70) }
        let block = ql + qh + scales.map { UInt8(bitPattern: $0) } + [0x00, 0x38]  // d = 0.5
        let y = Self.dequantize(Int32(EMBER_TYPE_Q6_K), block, 256)
        for e in 0..<256 { XCTAssertEqual(y[e], 0.5 * Float(scales[e / 16]) * Float(q[e] - 32), "e=\(e)") }
    }

    func testActivationFormats() {
        // Q8_0: d = amax/127 stored as a half, q = round(x/d), ties to even. amax = 127 gives
        // d = 1 so the ties are exact: -63.5 -> -64, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
        var x = [Float](repeating: 0, count: 32)
        x[0] = 127; x[1] = -63.5; x[2] = 0.5; x[3] = 1.5; x[4] = 2.5; x[5] = -3.2
        let a = activations(Int32(EMBER_TYPE_Q8_0), x)
        XCTAssertEqual(Array(a[0..<2]), [0x00, 0x3C])
        XCTAssertEqual(a[2...7].map { Int8(bitPattern: $0) }, [127, -64, 0, 2, 2, -3])

        // Q8_1: as Q8_0 plus s = d·Σq as a half: 127 - 64 + 0 + 2 + 2 - 3 = 64.
        let a1 = activations(Int32(EMBER_TYPE_Q4_1), x)
        XCTAssertEqual(Array(a1[0..<4]), [0x00, 0x3C, 0x00, 0x54])  // half 64 = 0x5400

        // Q8_K: scale from the largest-magnitude value with its sign: iscale = -127/max, so
        // that value maps to -127, d = 1/iscale (f32), bsums are sums of 16.
        var xk = [Float](repeating: 0, count: 256)
        xk[5] = 2; xk[6] = -1; xk[20] = 1
        let ak = activations(Int32(EMBER_TYPE_Q4_K), xk)
        let d = ak.withUnsafeBytes { $0.load(as: Float.self) }
        XCTAssertEqual(d, 1 / (-127 / Float(2)))
        let qs = ak[4..<260].map { Int8(bitPattern: $0) }
        XCTAssertEqual(qs[5], -127)
        XCTAssertEqual(qs[6], 64)  // -1 * -63.5 = 63.5, ties to even
        XCTAssertEqual(qs[20], -64)
        let bsums = ak.withUnsafeBytes { p in (0..<16).map { p.load(fromByteOffset: 260 + 2 * $0, as: Int16.self) } }
        XCTAssertEqual(bsums[0], -63)
        XCTAssertEqual(bsums[1], -64)
        XCTAssertEqual(bsums[2...].allSatisfy { $0 == 0 }, true)
    }
}

private extension UInt16 {
    var littleEndianBytes: [UInt8] { [UInt8(self & 0xFF), UInt8(self >> 8)] }
}
