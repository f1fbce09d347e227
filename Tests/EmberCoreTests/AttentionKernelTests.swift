import CEmberKernels
@testable import EmberCore
import XCTest

/// Tests of the tiled attention kernel (ember_attention.h, Kernels/Attention.swift) on generated
/// layers: against the per-head kernel it replaces (ember_attention_head, F32 cache), against
/// a double-precision softmax, across thread counts and row splits, on both paths.
///
/// Tolerance of one output element (row t, head h, element d), u = 2^-24. Let the row see n
/// keys k in nb key blocks; s_k = scale·q·k_k, out = Σ e^(s_k)·v_k,d / Σ e^(s_k).
/// - The output is a weighted mean of the v_k,d. If every weight is perturbed by a factor within
///   e^(±Δ), the mean moves by at most (e^(2Δ) − 1)·V, V = max_k |v_k,d| (split v − mean into
///   its positive and negative parts, which carry equal weight before the perturbation).
/// - Weight perturbations, as Δ:
///   · the cache's rounding of keys, |k̂ − k| ≤ e_k per element: scale·Σ_d |q_d|·e_k,d;
///   · the float dot (head_dim products and sums) and the scale: (head_dim + 1)·u·scale·Σ|q|·|k̂|;
///   · the exponential: relative error ≤ 2^-21 (the vector exp's polynomial is within 2e-7, plus
///     a few roundings; libm's expf within 1 ulp), once for P and once more in a merge of
///     partials, so 4·2^-21 with margin; the rescale factors e^(m − m') multiply a block's
///     accumulator and its sum alike, so only their roundings count: 2u per block boundary.
/// - The float sums Σ p·v and Σ p over n keys (plus up to 17 partials and the final 1/l):
///   (2·(n + 40)·u + 2u)·V.
/// - The cache's rounding of values, |v̂ − v| ≤ e_v: moves the mean by at most max_k e_v.
/// Cache rounding per element (0 for F32): F16 rounds to nearest, e = 2^-11·|x| + 2^-25 (half a
/// unit of the smallest subnormal); Q8_0 stores q·half(d) with d = amax/127 of the 32-element
/// block: half a step plus d's half rounding over |q| ≤ 127, e = d·(0.5 + 127·2^-11)·1.01.
///
/// Compared with references on the cache as stored, only the float terms remain: a wrong key,
/// mask or block moves outputs by a weight share of |v| (and the data below gives a few keys
/// a large weight right at the causal and window boundaries), far beyond that tolerance. The
/// comparison with the unrounded keys and values checks the rounding bound itself.
final class AttentionKernelTests: XCTestCase {
    typealias Rng = KernelTests.Rng
    static let u = 0x1p-24

    /// A layer's cache over `stored` positions, in floats and as stored.
    struct Layer {
        let shape: AttentionShape
        let type: KVCacheType
        let stored: Int
        var keys: [Float], values: [Float]           // position-major, kv heads side by side
        var keyRows: [UInt8] = [], valueRows: [UInt8] = []
        var roundedKeys: [Float] = [], roundedValues: [Float] = []
        var keyStride: Int { type.rowBytes(elements: shape.kvHeadCount * shape.headDimension)! }
        var valueStride: Int { type.rowBytes(elements: shape.kvHeadCount * shape.valueDimension)! }
        var kvLength: Int { shape.kvHeadCount * shape.headDimension }
        var valueLength: Int { shape.kvHeadCount * shape.valueDimension }

        init(shape: AttentionShape, type: KVCacheType, stored: Int, rng: inout Rng) {
            self.shape = shape
            self.type = type
            self.stored = stored
            keys = []
            values = []
            for _ in 0..<stored {
                keys += rng.vector(shape.kvHeadCount * shape.headDimension)
                values += rng.vector(shape.kvHeadCount * shape.valueDimension)
            }
        }

        /// Stores every position in the cache type and expands the rows back.
        mutating func store() {
            keyRows = rows(keys, kvLength, keyStride)
            valueRows = rows(values, valueLength, valueStride)
            roundedKeys = expand(keyRows, kvLength, keyStride)
            roundedValues = expand(valueRows, valueLength, valueStride)
        }

        private func rows(_ x: [Float], _ length: Int, _ stride: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: stored * stride)
            x.withUnsafeBufferPointer { xp in
                out.withUnsafeMutableBytes { op in
                    for p in 0..<stored { type.store(xp.baseAddress! + p * length, count: length, into: op.baseAddress! + p * stride) }
                }
            }
            return out
        }

        private func expand(_ bytes: [UInt8], _ length: Int, _ stride: Int) -> [Float] {
            var out = [Float](repeating: 0, count: stored * length)
            bytes.withUnsafeBytes { b in
                out.withUnsafeMutableBufferPointer { o in
                    for p in 0..<stored {
                        ember_dequantize_row(Int32(type.tensorType.rawValue), b.baseAddress! + p * stride,
                                             o.baseAddress! + p * length, Int64(length))
                    }
                }
            }
            return out
        }

        /// Largest rounding of element e of row (position) p when stored (see the top).
        func roundingBound(_ x: [Float], length: Int, position p: Int, element e: Int) -> Double {
            let v = Double(abs(x[p * length + e]))
            switch type {
            case .f32: return 0
            case .f16: return v * 0x1p-11 + 0x1p-25
            case .q8_0:
                let b = p * length + e / 32 * 32
                let amax = Double(x[b..<b + 32].map { abs($0) }.max()!)
                return amax / 127 * (0.5 + 127 * 0x1p-11) * 1.01
            }
        }
    }

    /// A batch of query rows over a layer.
    struct Batch {
        var queries: [Float]
        let positions: [Int]
        let window: Int?
        var queryLength: Int

        init(layer: Layer, positions: [Int], window: Int?, rng: inout Rng) {
            self.positions = positions
            self.window = window
            let length = layer.shape.headCount * layer.shape.headDimension
            queryLength = length
            // Twice the keys' spread: scores vary by several units, so weights are uneven.
            var q: [Float] = []
            for _ in positions { q += rng.vector(length).map { 2 * $0 } }
            queries = q
        }

        func keys(row t: Int) -> Range<Int> { AttentionKernel.keys(position: positions[t], window: window) }

        /// Gives the keys at the edges of row t's range (its own position, the next one, and
        /// either side of its window start) a score about 12 above the rest for query head h.
        func sharpen(_ layer: inout Layer, row t: Int, head h: Int) {
            let s = layer.shape, g = h / s.groupSize
            let q = queries[(t * queryLength + h * s.headDimension)..<(t * queryLength + (h + 1) * s.headDimension)]
            let norm2 = q.reduce(0) { $0 + Double($1) * Double($1) }
            let range = keys(row: t)
            for p in [range.upperBound - 1, range.upperBound, range.lowerBound - 1, range.lowerBound]
            where p >= 0 && p < layer.stored {
                for (d, qd) in q.enumerated() {
                    layer.keys[p * layer.kvLength + g * s.headDimension + d] += Float(12 / (Double(s.scale) * norm2) * Double(qd))
                }
            }
        }
    }

    /// Double-precision attention with each output's tolerance (see the top); `rounded`: over
    /// the cache as stored (float terms only), else over the unrounded keys and values.
    func reference(_ layer: Layer, _ batch: Batch, rounded: Bool) -> [(value: Double, tolerance: Double)] {
        let s = layer.shape, hd = s.headDimension, vd = s.valueDimension
        let keys = rounded ? layer.roundedKeys : layer.keys, values = rounded ? layer.roundedValues : layer.values
        let u = Self.u, expError = 0x1p-21
        var out: [(Double, Double)] = []
        for t in 0..<batch.positions.count {
            let range = batch.keys(row: t)
            let blocks = (range.upperBound - 1) / 64 - range.lowerBound / 64 + 1
            for h in 0..<s.headCount {
                let g = h / s.groupSize
                let q = (0..<hd).map { Double(batch.queries[t * batch.queryLength + h * hd + $0]) }
                var scores: [Double] = [], delta = 0.0
                for p in range {
                    var dot = 0.0, magnitude = 0.0, rounding = 0.0
                    for d in 0..<hd {
                        let e = g * hd + d
                        let k = Double(keys[p * layer.kvLength + e])
                        let ek = rounded ? 0 : layer.roundingBound(layer.keys, length: layer.kvLength, position: p, element: e)
                        dot += q[d] * k
                        magnitude += abs(q[d]) * (abs(k) + ek)
                        rounding += abs(q[d]) * ek
                    }
                    scores.append(Double(s.scale) * dot)
                    delta = max(delta, Double(s.scale) * (rounding + Double(hd + 1) * u * magnitude))
                }
                delta += 4 * expError + 2 * u * Double(blocks + 2)
                let top = scores.max()!
                let weights = scores.map { exp($0 - top) }
                let total = weights.reduce(0, +)
                for d in 0..<vd {
                    var sum = 0.0, vmax = 0.0, evmax = 0.0
                    for (i, p) in range.enumerated() {
                        let e = g * vd + d
                        let v = Double(values[p * layer.valueLength + e])
                        sum += weights[i] * v
                        vmax = max(vmax, abs(v))
                        if !rounded {
                            evmax = max(evmax, layer.roundingBound(layer.values, length: layer.valueLength, position: p, element: e))
                        }
                    }
                    let sums = (2 * Double(range.count + 40) * u + 2 * u) * (vmax + evmax)
                    out.append((sum / total, (exp(2 * delta) - 1) * (vmax + evmax) + evmax + sums))
                }
            }
        }
        return out
    }

    /// AttentionKernel.run over the layer's stored cache.
    func run(_ layer: Layer, _ batch: Batch, threads: Int) -> [Float] {
        let s = layer.shape
        let pool = ThreadPool(threads: threads)
        let workspace = AttentionWorkspace(shape: s, threads: threads)
        let outLength = s.headCount * s.valueDimension
        var out = [Float](repeating: .nan, count: batch.positions.count * outLength)
        layer.keyRows.withUnsafeBytes { k in
            layer.valueRows.withUnsafeBytes { v in
                let cache = AttentionCacheView(type: layer.type, keys: k.baseAddress!, values: v.baseAddress!,
                                               keyStride: layer.keyStride, valueStride: layer.valueStride)
                AttentionKernel.run(pool: pool, shape: s, cache: cache, queries: batch.queries, queryStride: batch.queryLength,
                              positions: batch.positions, window: batch.window, output: &out, outputStride: outLength,
                              workspace: workspace)
            }
        }
        return out
    }

    /// The per-head kernel the forward pass used before, on an F32 layer.
    func perHead(_ layer: Layer, _ batch: Batch) -> [Float] {
        let s = layer.shape, hd = s.headDimension, vd = s.valueDimension
        var out = [Float](repeating: .nan, count: batch.positions.count * s.headCount * vd)
        var scores = [Float](repeating: 0, count: layer.stored)
        for t in 0..<batch.positions.count {
            let range = batch.keys(row: t)
            for h in 0..<s.headCount {
                let g = h / s.groupSize
                out.withUnsafeMutableBufferPointer { o in batch.queries.withUnsafeBufferPointer { q in
                    layer.roundedKeys.withUnsafeBufferPointer { k in
                        layer.roundedValues.withUnsafeBufferPointer { v in
                            ember_attention_head(q.baseAddress! + t * batch.queryLength + h * hd,
                                                 k.baseAddress! + range.lowerBound * layer.kvLength + g * hd, Int64(layer.kvLength),
                                                 v.baseAddress! + range.lowerBound * layer.valueLength + g * vd, Int64(layer.valueLength),
                                                 Int64(range.count), Int64(hd), Int64(vd), s.scale, &scores,
                                                 o.baseAddress! + (t * s.headCount + h) * vd)
                        }
                    }
                } }
            }
        }
        return out
    }

    /// The C arguments for `batch` over `layer`, writing into `out`, valid inside `body`.
    func withArguments(_ layer: Layer, _ batch: Batch, out: inout [Float], _ body: (inout ember_attention_args) -> Void) {
        let s = layer.shape, positions = batch.positions.map(Int64.init)
        layer.keyRows.withUnsafeBytes { k in
            layer.valueRows.withUnsafeBytes { v in
                batch.queries.withUnsafeBufferPointer { q in
                    positions.withUnsafeBufferPointer { p in
                        out.withUnsafeMutableBufferPointer { o in
                            var args = ember_attention_args(
                                cache_type: Int32(layer.type.tensorType.rawValue), keys: k.baseAddress, values: v.baseAddress,
                                key_stride: layer.keyStride, value_stride: layer.valueStride, queries: q.baseAddress,
                                query_stride: Int64(batch.queryLength), positions: p.baseAddress, window: Int64(batch.window ?? 0),
                                out: o.baseAddress, out_stride: Int64(s.headCount * s.valueDimension),
                                head_count: Int64(s.headCount), kv_head_count: Int64(s.kvHeadCount),
                                head_dim: Int64(s.headDimension), value_dim: Int64(s.valueDimension), scale: s.scale)
                            body(&args)
                        }
                    }
                }
            }
        }
    }

    /// The layers tested: SmolLM2's heads, Gemma 3 1B's, a head size that is no multiple of 32
    /// (F32/F16 only), one that is no multiple of 8 (the portable tiles on any CPU), many heads
    /// per kv head; with and without a sliding window; a batch of rows and single rows.
    static let shapes: [(AttentionShape, stored: Int, rows: Range<Int>, window: Int?)] = [
        (AttentionShape(headCount: 9, kvHeadCount: 3, headDimension: 64, valueDimension: 64, scale: 0.125), 200, 150..<180, nil),
        (AttentionShape(headCount: 9, kvHeadCount: 3, headDimension: 64, valueDimension: 64, scale: 0.125), 200, 150..<180, 37),
        (AttentionShape(headCount: 4, kvHeadCount: 1, headDimension: 256, valueDimension: 256, scale: 0.0625), 140, 100..<140, 50),
        (AttentionShape(headCount: 6, kvHeadCount: 2, headDimension: 40, valueDimension: 24, scale: 0.15), 90, 0..<90, nil),
        (AttentionShape(headCount: 4, kvHeadCount: 2, headDimension: 20, valueDimension: 12, scale: 0.2), 70, 60..<70, 9),
        (AttentionShape(headCount: 64, kvHeadCount: 1, headDimension: 32, valueDimension: 32, scale: 0.17), 80, 70..<80, nil),
    ]

    /// Generated layers and batches for `type`; the last position of each batch is also run
    /// as a single row, and one long single-row case splits its keys into chunks of 128.
    func cases(_ type: KVCacheType, rng: inout Rng) -> [(Layer, Batch, String)] {
        var out: [(Layer, Batch, String)] = []
        for (shape, stored, rows, window) in Self.shapes where (try? shape.validate(cacheType: type)) != nil {
            var layer = Layer(shape: shape, type: type, stored: stored, rng: &rng)
            let batch = Batch(layer: layer, positions: Array(rows), window: window, rng: &rng)
            for t in stride(from: 0, to: rows.count, by: 7) { batch.sharpen(&layer, row: t, head: t % shape.headCount) }
            let single = Batch(layer: layer, positions: [stored - 1], window: window, rng: &rng)
            single.sharpen(&layer, row: 0, head: 1)
            layer.store()
            let name = "\(type) heads \(shape.headCount)/\(shape.kvHeadCount) dims \(shape.headDimension)/\(shape.valueDimension) window \(window.map(String.init) ?? "none")"
            out.append((layer, batch, name + " rows \(rows)"))
            out.append((layer, single, name + " single row"))
        }
        let long = AttentionShape(headCount: 2, kvHeadCount: 1, headDimension: 64, valueDimension: 64, scale: 0.125)
        var layer = Layer(shape: long, type: type, stored: 1300, rng: &rng)
        let single = Batch(layer: layer, positions: [1299], window: nil, rng: &rng)
        single.sharpen(&layer, row: 0, head: 0)
        layer.store()
        out.append((layer, single, "\(type) 1300 keys single row"))
        return out
    }

    func withPaths(_ body: (String) throws -> Void) rethrows {
        try body(ember_has_avx2() != 0 ? "AVX2" : "portable")
        ember_force_portable(1)
        defer { ember_force_portable(0) }
        try body("portable")
    }

    func check(_ got: [Float], _ want: [(value: Double, tolerance: Double)], _ what: String) {
        XCTAssertEqual(got.count, want.count, what)
        var failures = 0
        for (i, (g, w)) in zip(got, want).enumerated() where !(abs(Double(g) - w.value) <= w.tolerance) {
            failures += 1
            if failures <= 3 { XCTFail("\(what): output \(i) = \(g), reference \(w.value) ± \(w.tolerance)") }
        }
    }

    // MARK: Tests

    func testF32MatchesPerHeadKernel() {
        var rng = Rng(state: 11)
        for (layer, batch, name) in cases(.f32, rng: &rng) {
            let old = perHead(layer, batch)
            // Both kernels are within the float tolerance of the exact value: twice it apart.
            let bound = reference(layer, batch, rounded: true).map { (Double(0), 2 * $0.tolerance) }
            withPaths { path in
                let new = run(layer, batch, threads: 2)
                check(zip(new, old).map { $0 - $1 }, bound, "\(name) \(path): new - per-head")
            }
        }
    }

    func testAllCacheTypesMatchDoubleReference() {
        var rng = Rng(state: 12)
        for type in KVCacheType.allCases {
            for (layer, batch, name) in cases(type, rng: &rng) {
                let stored = reference(layer, batch, rounded: true)
                let unrounded = reference(layer, batch, rounded: false)
                withPaths { path in
                    let out = run(layer, batch, threads: 2)
                    check(out, stored, "\(name) \(path) vs the stored cache")
                    check(out, unrounded, "\(name) \(path) vs unrounded keys and values")
                }
            }
        }
    }

    /// Rows split differently among calls, and pools of 1 to 3 threads, give the same bits.
    func testResultsDoNotDependOnTheSplit() {
        var rng = Rng(state: 13)
        for type in [KVCacheType.f16, .q8_0] {
            for (layer, batch, name) in cases(type, rng: &rng) {
                let one = run(layer, batch, threads: 1)
                for threads in [2, 3] {
                    XCTAssertEqual(run(layer, batch, threads: threads).map(\.bitPattern), one.map(\.bitPattern),
                                   "\(name): \(threads) threads")
                }
            }
        }
        // Direct calls: rows [0, n) at once against [0, 5) + [5, n), per kv head.
        var layer = Layer(shape: Self.shapes[1].0, type: .f16, stored: 200, rng: &rng)
        layer.store()
        let batch = Batch(layer: layer, positions: Array(150..<180), window: 37, rng: &rng)
        let s = layer.shape
        var whole = [Float](repeating: 0, count: 30 * s.headCount * s.valueDimension), split = whole
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { scratch.deallocate() }
        withArguments(layer, batch, out: &whole) { args in
            XCTAssertLessThanOrEqual(ember_attention_scratch_bytes(&args), 1 << 20)
            for g in 0..<Int64(s.kvHeadCount) { ember_attention(&args, g, 0, 30, scratch) }
        }
        withArguments(layer, batch, out: &split) { args in
            for g in 0..<Int64(s.kvHeadCount) {
                ember_attention(&args, g, 0, 5, scratch)
                ember_attention(&args, g, 5, 30, scratch)
            }
        }
        XCTAssertEqual(split.map(\.bitPattern), whole.map(\.bitPattern), "rows split among calls")
    }

    /// A partial over keys the row does not see is empty, and merging partials over any split
    /// of the keys matches the double reference.
    func testPartialsAndMerge() throws {
        var rng = Rng(state: 14)
        let shape = Self.shapes[0].0
        var layer = Layer(shape: shape, type: .f32, stored: 300, rng: &rng)
        layer.store()
        let batch = Batch(layer: layer, positions: [250], window: 100, rng: &rng)
        let want = reference(layer, batch, rounded: true)
        let floats = shape.valueDimension + 2, group = shape.groupSize
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { scratch.deallocate() }
        var got = [Float](repeating: .nan, count: shape.headCount * shape.valueDimension)
        var unused: [Float] = [0]
        // Ranges: two before the window (empty), uneven ones across it, one after the row.
        let ranges: [Range<Int64>] = [0..<100, 100..<151, 151..<152, 152..<203, 203..<251, 251..<300]
        // Element pointers into the arrays: `&array[i]` may point at a one-element copy.
        let partials = UnsafeMutablePointer<Float>.allocate(capacity: ranges.count * shape.headCount * floats)
        defer { partials.deallocate() }
        withArguments(layer, batch, out: &unused) { args in
            for (c, r) in ranges.enumerated() {
                for g in 0..<shape.kvHeadCount {
                    ember_attention_partial(&args, Int64(g), 0, r.lowerBound, r.upperBound,
                                            partials + (g * ranges.count + c) * group * floats, scratch)
                }
            }
        }
        for g in 0..<shape.kvHeadCount {
            for empty in [0, 1, ranges.count - 1] {  // max −inf, sum 0
                let p = (g * ranges.count + empty) * group * floats
                XCTAssertEqual(partials[p], -.infinity)
                XCTAssertEqual(partials[p + 1], 0)
            }
        }
        got.withUnsafeMutableBufferPointer { out in
            for h in 0..<shape.headCount {
                let g = h / group, j = h % group
                ember_attention_merge(partials + (g * ranges.count * group + j) * floats, Int64(ranges.count),
                                      Int64(group * floats), Int64(shape.valueDimension), out.baseAddress! + h * shape.valueDimension)
            }
        }
        check(got, want, "merged partials")
    }

    func testCacheRowsAndStores() throws {
        XCTAssertEqual(KVCacheType.f32.rowBytes(elements: 192), 768)
        XCTAssertEqual(KVCacheType.f16.rowBytes(elements: 192), 384)
        XCTAssertEqual(KVCacheType.q8_0.rowBytes(elements: 192), 6 * 34)
        XCTAssertNil(KVCacheType.q8_0.rowBytes(elements: 80))
        // Not a cache type, or a Q8_0 row that is no whole number of blocks: nothing written.
        let x = [Float](repeating: 1, count: 40)
        var dst = [UInt8](repeating: 0xAB, count: 200)
        XCTAssertEqual(ember_kv_store(Int32(EMBER_TYPE_Q4_0), x, &dst, 32), -1)
        XCTAssertEqual(ember_kv_store(Int32(EMBER_TYPE_Q8_0), x, &dst, 40), -1)
        XCTAssertEqual(dst, [UInt8](repeating: 0xAB, count: 200))
        // Stored rows expand back within the rounding bounds of the top.
        var rng = Rng(state: 15)
        let shape = AttentionShape(headCount: 2, kvHeadCount: 2, headDimension: 64, valueDimension: 64, scale: 1)
        for type in KVCacheType.allCases {
            var layer = Layer(shape: shape, type: type, stored: 3, rng: &rng)
            layer.keys[5] = 1e-6  // a subnormal half
            layer.store()
            for p in 0..<3 {
                for e in 0..<layer.kvLength {
                    let i = p * layer.kvLength + e
                    XCTAssertLessThanOrEqual(Double(abs(layer.roundedKeys[i] - layer.keys[i])),
                                             layer.roundingBound(layer.keys, length: layer.kvLength, position: p, element: e),
                                             "\(type) element \(i)")
                }
            }
        }
        XCTAssertThrowsError(try AttentionShape(headCount: 6, kvHeadCount: 2, headDimension: 80, valueDimension: 80, scale: 1)
            .validate(cacheType: .q8_0)) { error in
            XCTAssertTrue("\(error)".contains("80"), "\(error)")
        }
        XCTAssertNoThrow(try AttentionShape(headCount: 6, kvHeadCount: 2, headDimension: 80, valueDimension: 80, scale: 1)
            .validate(cacheType: .f16))
        XCTAssertThrowsError(try AttentionShape(headCount: 6, kvHeadCount: 4, headDimension: 64, valueDimension: 64, scale: 1)
            .validate(cacheType: .f16))
    }
}
