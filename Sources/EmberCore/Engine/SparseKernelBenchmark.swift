import CEmberKernels
import Foundation

/// The neuron-aware sparse operators against dense matrix-vector products, on one generated
/// FFN-shaped matrix, at several shares of active neurons, in one run: the gather of active
/// rows (gate, up) against a dense matvec of the same matrix, and the column-gather axpy of
/// the neuron-major down copy against a dense down projection.
public struct SparseKernelBenchmark: Sendable {
    public var rows = 11008
    public var columns = 4096
    public var type = TensorType.q4_0
    /// Storage of the neuron-major down copy (nil: the sparse engine's default).
    public var downType: TensorType?
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    public var repetitions = 20
    public static let percents = [5, 10, 20, 30, 50, 75, 100]

    public init() {}

    /// One share of active neurons: median and best times in µs of each of the four runs, and
    /// the bytes the two sparse ones read.
    public struct Row: Sendable {
        public var percent: Int
        public var denseUp, gather, denseDown, axpy: (median: Double, best: Double)
        public var gatherBytes, axpyBytes: Int
    }

    public struct Report: Sendable {
        public var matrixBytes: Int
        public var downType: TensorType
        public var transposeSeconds: Double
        public var rows: [Row]
    }

    /// Whether `type` can be benchmarked (a weight type with matrix kernels).
    public static func supports(_ type: TensorType) -> Bool {
        ember_block_size(Int32(type.rawValue)) > 0 && type != .q8_1 && type != .q8_K
    }

    public func run() throws -> Report {
        guard Self.supports(type), downType.map(Self.supports) ?? true else {
            throw SessionError.invalidOption("\(type) has no matrix kernels to benchmark")
        }
        guard columns % type.blockSize == 0, rows % type.blockSize == 0 else {
            throw SessionError.invalidOption("rows and columns must be multiples of \(type)'s block size \(type.blockSize)")
        }
        let pool = ThreadPool(threads: threads)

        // up: rows x columns (gather rows); down: columns x rows (dense), and its neuron-major
        // transpose (rows x columns) for the column gather.
        let up = GeneratedMatrix(type: type, rows: rows, columns: columns, seed: 1, pool: pool)
        let down = GeneratedMatrix(type: type, rows: columns, columns: rows, seed: 2, pool: pool)
        let transposeStart = DispatchTime.now()
        let neuronMajor = try NeuronMajorMatrix(transposing: down.matrix, as: downType, pool: pool)
        let transposeSeconds = seconds(since: transposeStart)

        var random = SystemRandomNumberGenerator()
        let x = (0..<max(rows, columns)).map { _ in Float.random(in: -1...1, using: &random) }
        let upActivations = ActivationBuffer(type: up.matrix.activationType, length: columns, capacity: 1)
        upActivations.store(x, at: 0)
        let downActivations = ActivationBuffer(type: down.matrix.activationType, length: rows, capacity: 1)
        downActivations.store(x, at: 0)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: max(rows, columns))
        defer { y.deallocate() }

        // Decode reads each layer's weights once per token, from DRAM: the whole model is far
        // larger than the last-level cache. Each timed run starts after reading a buffer twice
        // the L3 size, so neither dense nor sparse runs profit from the previous repetition.
        let flushBytes = 64 << 20
        let flush = UnsafeMutablePointer<UInt64>.allocate(capacity: flushBytes / 8)
        flush.initialize(repeating: 1, count: flushBytes / 8)
        defer { flush.deallocate() }
        let sink = UnsafeMutablePointer<UInt64>.allocate(capacity: threads)
        defer { sink.deallocate() }
        func evictCaches() {
            pool.run { thread in
                let words = ThreadPool.share(of: flushBytes / 8, thread: thread, threads: threads, granularity: 8)
                var s: UInt64 = 0
                for i in Swift.stride(from: words.lowerBound, to: words.upperBound, by: 8) { s &+= flush[i] }
                sink[thread] = s  // keeps the reads
            }
        }
        func measure(_ body: () -> Void) -> Double {
            evictCaches()
            let start = DispatchTime.now()
            body()
            return seconds(since: start) * 1e6
        }
        func denseMatvec(_ w: WeightMatrix, _ a: ActivationBuffer) {
            pool.run { thread in
                let r = ThreadPool.share(of: w.rows, thread: thread, threads: threads, granularity: 16)
                if !r.isEmpty { w.multiply(a.vector(0), into: y + r.lowerBound, rows: r) }
            }
        }
        /// A fresh random active set of `count` neurons, ascending (the order a predictor or a
        /// threshold scan produces).
        func activeSet(_ count: Int) -> [Int32] {
            var ids = Array(0..<Int32(rows))
            ids.shuffle(using: &random)
            return ids.prefix(count).sorted()
        }
        func gather(_ active: [Int32]) {
            active.withUnsafeBufferPointer { ids in
                pool.run { thread in
                    let share = ThreadPool.share(of: ids.count, thread: thread, threads: threads)
                    if !share.isEmpty {
                        up.matrix.multiply(gathering: ids.baseAddress! + share.lowerBound, count: share.count,
                                           activations: upActivations.vector(0), into: y + share.lowerBound)
                    }
                }
            }
        }
        func axpy(_ active: [Int32]) {
            active.withUnsafeBufferPointer { ids in
                SparseFeedForward.runDown(pool: pool, down: neuronMajor, rows: ids.baseAddress!,
                                          coefficients: x, count: ids.count, output: y)
            }
        }

        denseMatvec(up.matrix, upActivations)  // wakes the pool's threads
        var report: [Row] = []
        for percent in Self.percents {
            let count = max(1, rows * percent / 100)
            var times: [[Double]] = [[], [], [], []]
            for _ in 0..<repetitions {
                let active = activeSet(count), other = activeSet(count)
                times[0].append(measure { denseMatvec(up.matrix, upActivations) })
                times[1].append(measure { gather(active) })
                times[2].append(measure { denseMatvec(down.matrix, downActivations) })
                times[3].append(measure { axpy(other) })
            }
            let m = times.map { Statistics.median($0) }, b = times.map { $0.min()! }
            report.append(Row(percent: percent, denseUp: (m[0], b[0]), gather: (m[1], b[1]), denseDown: (m[2], b[2]),
                              axpy: (m[3], b[3]), gatherBytes: count * up.matrix.rowBytes,
                              axpyBytes: count * neuronMajor.weights.rowBytes))
        }
        return Report(matrixBytes: up.matrix.byteCount, downType: neuronMajor.type, transposeSeconds: transposeSeconds, rows: report)
    }
}

/// A matrix of random weights, quantized on the pool's threads.
private final class GeneratedMatrix {
    let matrix: WeightMatrix
    private let storage: UnsafeMutableRawPointer

    init(type: TensorType, rows: Int, columns: Int, seed: UInt64, pool: ThreadPool) {
        let rowBytes = type.byteCount(elements: columns)!
        storage = .allocate(byteCount: rows * rowBytes, alignment: 64)
        let storage = self.storage
        pool.parallelFor(rows, granularity: 64) { range in
            var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(range.lowerBound)
            var row = [Float](repeating: 0, count: columns)
            for r in range {
                for j in 0..<columns {
                    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    row[j] = Float(Int64(bitPattern: state) >> 40) * 0x1p-23
                }
                ember_quantize_row(Int32(type.rawValue), row, storage + r * rowBytes, Int64(columns))
            }
        }
        matrix = WeightMatrix(name: "generated", type: type, rows: rows, columns: columns, data: UnsafeRawPointer(storage))
    }

    deinit { storage.deallocate() }
}
