import CEmberKernels
import Foundation

/// Neuron-aware sparse FFN operators (DESIGN.md section 5): gate and up rows of the active
/// neurons are gathered from their row-major matrices, and down works on its neuron-major
/// transpose, so every sparse operator reads whole contiguous rows.
enum SparseKernelError: Error, CustomStringConvertible {
    case unsupportedType(matrix: String, type: TensorType, length: Int)

    var description: String {
        switch self {
        case let .unsupportedType(matrix, type, length):
            return "\(matrix): cannot store a neuron-major copy as \(type) (rows of \(length) elements; "
                + "the type needs kernels and a block size dividing the row)"
        }
    }
}

extension WeightMatrix {
    /// y[k] = row rows[k] · activations for k < count (activations in `activationType`
    /// format). Each y[k] equals what the dense `multiply` gives for that row, bit for bit.
    @inline(__always)
    func multiply(gathering rows: UnsafePointer<Int32>, count: Int,
                         activations: UnsafeRawPointer, into y: UnsafeMutablePointer<Float>) {
        ember_matvec_gather(Int32(type.rawValue), Int64(columns), data, rowBytes, activations,
                            rows, Int64(count), y)
    }
}

/// A down projection stored neuron-major: row i holds neuron i's output column (`columns` =
/// the hidden size), so the active neurons' contributions are a gather of contiguous rows.
///
/// Stored as Q8_0 by default. The source is usually 4- or 5-bit; requantizing it to 4 bits
/// would round every weight a second time (the transposed blocks mix values of 32 different
/// source blocks, so the old grid does not carry over), while Q8_0's step is 1/127 of a block's
/// largest value, well under the source's own rounding. K-quant types are not the default
/// because their 256-element super-blocks don't divide every hidden size (e.g. 576).
/// F16 is used when the hidden size is not a multiple of 32. The price: Q8_0 is 8.5 bits per
/// weight against 4.5 for Q4_0, so at equal activity the down gather reads about 1.9x the
/// bytes of the source; `as: down.type` keeps the source type when that matters more.
///
/// A file that already stores down neuron-major (PowerInfer's `ffn_down_t`) is used in place
/// (`init(inPlace:)`): no copy, its own type.
final class NeuronMajorMatrix: @unchecked Sendable {
    /// The neuron-major matrix: `rows` = neurons, `columns` = hidden size. Its memory belongs
    /// to this object, or to the mapped file it lies in (immutable either way).
    let weights: WeightMatrix
    private let storage: UnsafeMutableRawPointer?

    var type: TensorType { weights.type }
    var rows: Int { weights.rows }
    var columns: Int { weights.columns }

    /// The default storage type for rows of `length` elements.
    static func defaultType(length: Int) -> TensorType { length % 32 == 0 ? .q8_0 : .f16 }

    /// Whether the column gather (ember_axpy_gather) reads rows of `type`: every type with a
    /// row dequantizer, i.e. all weight types but the activation-only Q8_1 and Q8_K.
    static func canAccumulate(_ type: TensorType) -> Bool {
        ember_block_size(Int32(type.rawValue)) > 0 && type != .q8_1 && type != .q8_K
    }

    /// A matrix already stored neuron-major (row i = neuron i's output vector), used where it
    /// lies; `weights` must outlive this object (a mapped model file does).
    init(inPlace weights: WeightMatrix) {
        precondition(Self.canAccumulate(weights.type), "\(weights.name): no column gather for \(weights.type)")
        self.weights = weights
        storage = nil
    }

    /// Transposes `down` (rows = hidden size, columns = neurons) into neuron-major rows of
    /// `type` (nil: `defaultType`), on all threads of `pool`.
    init(transposing down: WeightMatrix, as type: TensorType? = nil, pool: ThreadPool) throws {
        let d = down.rows, neurons = down.columns
        let type = type ?? Self.defaultType(length: d)
        guard Self.canAccumulate(type), d % type.blockSize == 0, let rowBytes = type.byteCount(elements: d)
        else { throw SparseKernelError.unsupportedType(matrix: down.name, type: type, length: d) }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(64, neurons * rowBytes), alignment: 64)
        self.storage = storage
        weights = WeightMatrix(name: down.name + ".neuron_major", type: type, rows: neurons, columns: d,
                               data: UnsafeRawPointer(storage))

        // Tiles of `chunk` source rows x `width` neurons: the source is expanded only over the
        // tile's blocks (width is a multiple of the source block size), the tile (≤ 256 KB of
        // floats, L2-sized) is read back column by column, and each column piece is quantized
        // straight into its neuron's row (chunk is a multiple of every target block size).
        let sourceBlock = down.type.blockSize
        let width = max(sourceBlock, 64 / sourceBlock * sourceBlock)
        let chunk = 256
        let tiles = (neurons + width - 1) / width
        let sourceType = Int32(down.type.rawValue), targetType = Int32(type.rawValue)
        let targetBlockBytes = type.blockBytes, targetBlock = type.blockSize
        pool.parallelFor(tiles) { range in
            let tile = UnsafeMutablePointer<Float>.allocate(capacity: chunk * width)
            let column = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
            defer { tile.deallocate(); column.deallocate() }
            for t in range {
                let j0 = t * width, w = min(width, neurons - j0)
                let sourceOffset = j0 / sourceBlock * down.type.blockBytes
                var r0 = 0
                while r0 < d {
                    let h = min(chunk, d - r0)
                    for r in 0..<h {
                        ember_dequantize_row(sourceType, down.data + (r0 + r) * down.rowBytes + sourceOffset,
                                             tile + r * width, Int64(w))
                    }
                    for j in 0..<w {
                        for r in 0..<h { column[r] = tile[r * width + j] }
                        ember_quantize_row(targetType, column,
                                           storage + (j0 + j) * rowBytes + r0 / targetBlock * targetBlockBytes, Int64(h))
                    }
                    r0 += h
                }
            }
        }
    }

    /// The rows of `neurons` (ids into `source`, in that order) as a matrix of their own: a
    /// device's share of a layer.
    init(selecting neurons: [Int32], of source: NeuronMajorMatrix) {
        let rowBytes = source.weights.rowBytes
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(64, neurons.count * rowBytes), alignment: 64)
        self.storage = storage
        source.weights.copyRows(neurons, to: storage)
        weights = WeightMatrix(name: source.weights.name + ".selected", type: source.type, rows: neurons.count,
                               columns: source.columns, data: UnsafeRawPointer(storage))
    }

    deinit { storage?.deallocate() }

    /// y[0..<columns] += Σ_k coefficients[k] · row rows[k].
    @inline(__always)
    func accumulate(rows: UnsafePointer<Int32>, coefficients: UnsafePointer<Float>, count: Int,
                           into y: UnsafeMutablePointer<Float>) {
        ember_axpy_gather(Int32(weights.type.rawValue), Int64(weights.columns), weights.data, weights.rowBytes,
                          rows, coefficients, Int64(count), y)
    }
}

/// One token's FFN over a given set of active neurons, on all threads of a pool:
/// output = Σ_{i active} act(gate_i · x) · (up_i · x) · down_i (ungated: act(up_i · x) · down_i).
///
/// Gate and up are split by active neurons (each thread gathers a contiguous share of the
/// active list: every value is one whole dot product). Down is split by output columns, on
/// quant-block boundaries: each thread adds every active neuron's slice of its columns, in the
/// active list's order. So every output float is summed in the same order whatever the thread
/// count, and the result is the same bits at any `-t` (there is no cross-thread reduction).
enum SparseFeedForward {
    /// Scratch for `run`: per-thread activation buffers and the per-neuron values. Make one per (pool, layer shape) and reuse it; not for concurrent calls.
    final class Workspace {
        let threadCount: Int
        let hiddenLength: Int
        let neuronCount: Int
        fileprivate let gateValues: UnsafeMutablePointer<Float>
        fileprivate let upValues: UnsafeMutablePointer<Float>
        fileprivate let activations: [ActivationBuffers]

        init(threads: Int, hiddenLength: Int, neuronCount: Int) {
            threadCount = threads
            self.hiddenLength = hiddenLength
            self.neuronCount = neuronCount
            gateValues = .allocate(capacity: max(1, neuronCount))
            upValues = .allocate(capacity: max(1, neuronCount))
            activations = (0..<threads).map { _ in ActivationBuffers() }
        }

        deinit {
            gateValues.deallocate()
            upValues.deallocate()
        }

        /// `input` converted to activation format `type` in thread `thread`'s own buffer.
        fileprivate func convert(_ input: UnsafePointer<Float>, to type: TensorType, thread: Int) -> UnsafeRawPointer {
            let buffer = activations[thread].buffer(type: type, length: hiddenLength, capacity: 1)
            buffer.store(input, at: 0)
            return buffer.vector(0)
        }
    }

    /// output[0..<hidden) = the FFN of `input` (hidden floats, already normed) restricted to
    /// the `count` neurons in `active` (any order, no repeats). `gate` nil: an ungated FFN.
    /// `gateBias`/`upBias` (one float per neuron, or nil) join the gathered values before the
    /// activation; down's bias is the caller's, added once to the whole output.
    static func run(pool: ThreadPool, gate: WeightMatrix?, up: WeightMatrix, down: NeuronMajorMatrix,
                           activation: VectorKernels.Activation, input: UnsafePointer<Float>,
                           active: UnsafePointer<Int32>, count: Int,
                           output: UnsafeMutablePointer<Float>, workspace: Workspace,
                           gateBias: UnsafePointer<Float>? = nil, upBias: UnsafePointer<Float>? = nil) {
        let d = down.columns
        precondition(up.columns == d && gate.map { $0.columns == d && $0.rows == up.rows } ?? true
                     && down.rows == up.rows, "SparseFeedForward: matrix shapes disagree")
        precondition(workspace.threadCount >= pool.threadCount && workspace.hiddenLength == d
                     && workspace.neuronCount >= count, "SparseFeedForward: workspace too small")
        pool.run { thread in
            let share = ThreadPool.share(of: count, thread: thread, threads: pool.threadCount)
            guard !share.isEmpty else { return }
            let rows = active + share.lowerBound, n = share.count
            let g = workspace.gateValues + share.lowerBound, u = workspace.upValues + share.lowerBound
            // Each thread converts the input itself (a few µs) rather than waiting on a barrier.
            let upInput = workspace.convert(input, to: up.activationType, thread: thread)
            up.multiply(gathering: rows, count: n, activations: upInput, into: u)
            if let upBias { addGathered(upBias, rows: rows, count: n, into: u) }
            if let gate {
                let gateInput = gate.activationType == up.activationType
                    ? upInput : workspace.convert(input, to: gate.activationType, thread: thread)
                gate.multiply(gathering: rows, count: n, activations: gateInput, into: g)
                if let gateBias { addGathered(gateBias, rows: rows, count: n, into: g) }
                VectorKernels.gatedActivation(activation, gate: g, up: u, g, n)
            } else {
                VectorKernels.gatedActivation(activation, gate: u, up: nil, g, n)
            }
        }
        runDown(pool: pool, down: down, rows: active, coefficients: workspace.gateValues, count: count, output: output)
    }

    /// values[k] += bias[rows[k]] for k < count.
    @inline(__always)
    static func addGathered(_ bias: UnsafePointer<Float>, rows: UnsafePointer<Int32>, count: Int,
                            into values: UnsafeMutablePointer<Float>) {
        for k in 0..<count { values[k] += bias[Int(rows[k])] }
    }

    /// values[k] = row rows[k] of `matrix` · input (+ bias[rows[k]]) for k < count, the rows
    /// split among threads: the up rows of the neurons a dense gate selected.
    static func gather(pool: ThreadPool, matrix: WeightMatrix, input: UnsafePointer<Float>,
                              rows: UnsafePointer<Int32>, count: Int, into values: UnsafeMutablePointer<Float>,
                              workspace: Workspace, bias: UnsafePointer<Float>? = nil) {
        precondition(workspace.threadCount >= pool.threadCount && workspace.hiddenLength == matrix.columns,
                     "SparseFeedForward: workspace too small")
        pool.run { thread in
            let share = ThreadPool.share(of: count, thread: thread, threads: pool.threadCount)
            guard !share.isEmpty else { return }
            matrix.multiply(gathering: rows + share.lowerBound, count: share.count,
                            activations: workspace.convert(input, to: matrix.activationType, thread: thread),
                            into: values + share.lowerBound)
            if let bias { addGathered(bias, rows: rows + share.lowerBound, count: share.count, into: values + share.lowerBound) }
        }
    }

    /// The down projection alone, sparse over given neurons: output[0..<hidden) =
    /// Σ_k coefficients[k] · down row rows[k] (gate, up and the activation done elsewhere).
    /// Threads own slices of the output columns (see the type's comment).
    static func runDown(pool: ThreadPool, down: NeuronMajorMatrix, rows: UnsafePointer<Int32>,
                        coefficients: UnsafePointer<Float>, count: Int, output: UnsafeMutablePointer<Float>) {
        let w = down.weights
        pool.run { thread in
            let columns = ThreadPool.share(of: w.columns, thread: thread, threads: pool.threadCount,
                                           granularity: columnGranularity(w.type))
            guard !columns.isEmpty else { return }
            let y = output + columns.lowerBound
            y.initialize(repeating: 0, count: columns.count)
            ember_axpy_gather(Int32(w.type.rawValue), Int64(columns.count), columnSlice(w, from: columns.lowerBound),
                              w.rowBytes, rows, coefficients, Int64(count), y)
        }
    }

    /// Column shares start on quant-block boundaries, at least 64 floats apart (a cache line of
    /// output per 16 floats, whole SIMD stretches of 32).
    private static func columnGranularity(_ type: TensorType) -> Int {
        let block = type.blockSize
        return block >= 64 ? block : (64 + block - 1) / block * block
    }

    /// Row 0's bytes from column `column` (a block boundary) on; later rows `rowBytes` apart.
    private static func columnSlice(_ w: WeightMatrix, from column: Int) -> UnsafeRawPointer {
        w.data + column / w.type.blockSize * w.type.blockBytes
    }

    /// The dense down projection of a neuron-major matrix: output[t] = Σ_i activations[t][i] ·
    /// row i over every neuron, for `tokens` rows (`activations` rows `activationStride` floats
    /// apart, output rows `outputStride` apart). `neurons` lists 0..<rows in order.
    ///
    /// Threads split the hidden dimension, on quant-block boundaries, so each owns its output
    /// columns and nothing is reduced; each walks the neurons in tiles and applies a tile's
    /// row slices to every token while they are in cache, so a batch reads the matrix once.
    static func dense(pool: ThreadPool, down: NeuronMajorMatrix, neurons: UnsafePointer<Int32>,
                      activations: UnsafePointer<Float>, activationStride: Int, tokens: Int,
                      output: UnsafeMutablePointer<Float>, outputStride: Int) {
        let w = down.weights
        let type = Int32(w.type.rawValue), tile = 64  // a multiple of ember_axpy_group: the groups of one call
        pool.run { thread in
            let columns = ThreadPool.share(of: w.columns, thread: thread, threads: pool.threadCount,
                                           granularity: columnGranularity(w.type))
            guard !columns.isEmpty else { return }
            let slice = columnSlice(w, from: columns.lowerBound)
            for t in 0..<tokens {
                (output + t * outputStride + columns.lowerBound).initialize(repeating: 0, count: columns.count)
            }
            var first = 0
            while first < w.rows {
                let count = min(tile, w.rows - first)
                for t in 0..<tokens {
                    ember_axpy_gather(type, Int64(columns.count), slice, w.rowBytes, neurons + first,
                                      activations + t * activationStride + first, Int64(count),
                                      output + t * outputStride + columns.lowerBound)
                }
                first += count
            }
        }
    }
}
