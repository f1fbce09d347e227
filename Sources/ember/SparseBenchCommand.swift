import CEmberKernels
import EmberCore
import Foundation

/// `ember sparse-bench`: dense matvec against the neuron-aware sparse operators on one
/// generated FFN-shaped matrix, at several active fractions, in one run.
enum SparseBenchCommand {
    static let flags: [Arguments.Flag] = [
        .init(names: ["--rows"], takesValue: true, help: "neurons: rows of the gathered matrix (default 11008)"),
        .init(names: ["--columns"], takesValue: true, help: "hidden size: columns (default 4096)"),
        .init(names: ["--type"], takesValue: true, help: "weight type: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k (default q4_0)"),
        .init(names: ["--down-type"], takesValue: true, help: "storage type of the neuron-major down copy (default q8_0; f16 if --columns is no multiple of 32)"),
        CommonFlags.threads,
        .init(names: ["--repetitions", "-r"], takesValue: true, help: "repetitions per measurement; medians and minima reported (default 20)"),
    ]

    static let summary = "time gather matvec and column-gather axpy against dense matvec at several active fractions"

    static let fractions = [5, 10, 20, 30, 50, 75, 100]

    static func parseType(_ text: String, flag: String) throws -> TensorType {
        guard let type = TensorType(name: text), ember_block_size(Int32(type.rawValue)) > 0, type != .q8_1, type != .q8_K
        else { throw UsageError("\(flag): unknown or unsupported weight type \"\(text)\"") }
        return type
    }

    static func main(_ arguments: Arguments) throws {
        let rows = try arguments.int("--rows", default: 11008, range: 1...1 << 20)
        let columns = try arguments.int("--columns", default: 4096, range: 1...1 << 20)
        let type = try parseType(arguments.string("--type") ?? "q4_0", flag: "--type")
        let downType = try arguments.string("--down-type").map { try parseType($0, flag: "--down-type") }
        let threads = try arguments.threads()
        let repetitions = try arguments.int("--repetitions", default: 20, range: 1...10000)
        guard columns % type.blockSize == 0, rows % type.blockSize == 0 else {
            throw UsageError("--rows and --columns must be multiples of \(type)'s block size \(type.blockSize)")
        }
        let pool = ThreadPool(threads: threads)

        // up: rows x columns (gather rows); down: columns x rows (dense), and its neuron-major
        // transpose (rows x columns) for the column gather.
        let up = Generated(type: type, rows: rows, columns: columns, seed: 1, pool: pool)
        let down = Generated(type: type, rows: columns, columns: rows, seed: 2, pool: pool)
        let transposeStart = DispatchTime.now()
        let neuronMajor = try NeuronMajorMatrix(transposing: down.matrix, as: downType, pool: pool)
        let transposeSeconds = seconds(since: transposeStart)

        var random = SystemRandomNumberGenerator()
        let x = (0..<max(rows, columns)).map { _ in Float.random(in: -1...1, using: &random) }
        let upActivations = ActivationBuffer(type: up.matrix.activationType, length: columns, capacity: 1)
        upActivations.store(x, at: 0)
        let downActivations = ActivationBuffer(type: down.matrix.activationType, length: rows, capacity: 1)
        downActivations.store(x, at: 0)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: rows)
        defer { y.deallocate() }
        let coefficients = x
        let workspace = SparseFeedForward.Workspace(threads: threads, hiddenLength: columns, neuronCount: rows)

        // Decode reads each layer's weights once per token, from DRAM: the whole model is far
        // larger than the last-level cache. Each timed run starts after reading a buffer twice
        // the L3 size, so neither dense nor sparse runs profit from the previous repetition.
        let flushBytes = 64 << 20
        let flush = UnsafeMutablePointer<UInt64>.allocate(capacity: flushBytes / 8)
        flush.initialize(repeating: 1, count: flushBytes / 8)
        defer { flush.deallocate() }
        func evictCaches() {
            pool.parallelFor(flushBytes / 8, granularity: 8) { range in
                var s: UInt64 = 0
                for i in Swift.stride(from: range.lowerBound, to: range.upperBound, by: 8) { s &+= flush[i] }
                if s == 0 { print("") }  // never true; keeps the reads
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
                                          coefficients: coefficients, count: ids.count, output: y, workspace: workspace)
            }
        }

        denseMatvec(up.matrix, upActivations)  // wakes the pool's threads
        print("matrix \(rows) x \(columns) \(type) (\(String(format: "%.1f", Double(up.matrix.byteCount) / 1e6)) MB); "
              + "down \(columns) x \(rows) \(type), its neuron-major copy \(neuronMajor.type) "
              + "(transposed in \(String(format: "%.2f", transposeSeconds)) s); threads \(threads); median of \(repetitions), "
              + "caches evicted before every timed run")
        print("dense up and dense down are timed next to each sparse run (same conditions); speedup = dense / sparse "
              + "of the medians, and of the minima (best) which shared cores disturb least")
        print("active %  dense up µs  gather µs  speedup   best  GB/s  |  dense down µs  axpy-gather µs  speedup   best  GB/s")
        for percent in fractions {
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
            let gatherBytes = Double(count * up.matrix.rowBytes), axpyBytes = Double(count * neuronMajor.weights.rowBytes)
            print(String(format: "%8d  %11.0f  %9.0f  %6.2fx %5.2fx  %4.1f  |  %13.0f  %14.0f  %6.2fx %5.2fx  %4.1f",
                         percent, m[0], m[1], m[0] / m[1], b[0] / b[1], gatherBytes / m[1] / 1e3,
                         m[2], m[3], m[2] / m[3], b[2] / b[3], axpyBytes / m[3] / 1e3))
        }
    }

    /// A matrix of random weights, quantized on the pool's threads.
    final class Generated {
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
}
