import CEmberKernels
import Foundation

/// The sparse FFN of a batch of several rows (a continuous-batching step, a prompt chunk), as
/// PowerInfer batches it: each row's active neurons are selected as a single token's are (the
/// predictor, or the dense gate for exact and threshold:S, the dense gate and up for down:S),
/// then the union of the rows' sets is what the sparse operators read: each union neuron's
/// gate and up rows once for every row of the batch, its down row once per tile of the union
/// for every row that uses it.
///
/// Every row uses only its own active neurons' results, never the union's others, and keeps
/// the single-token path's summation order: a row's output is bit-identical to what the
/// single-token sparse FFN (SparseDecoder, CPU only, the same pool) gives for it alone (its
/// selection's products give it the same bits in a batch as alone, see ember_kernels.h). For
/// exact mode on a ReLU model the union's other neurons are zero for that row anyway, so using
/// the union or the row's own set would give the same output.
///
/// The union grows with the batch; past a measured share of the neurons (`SparseBatchRule`)
/// the batch runs the dense products instead, with the rows' selections as masks (what
/// `SparseExecution.maskedFeedForward` computes).
final class BatchedSparseFeedForward {
    private let mode: SparsityMode
    private let activation: VectorKernels.Activation
    private let pool: ThreadPool
    private let downs: [NeuronMajorMatrix]
    private let neuronCount: Int
    private let hiddenLength: Int
    let maxRows: Int

    /// Row t's selection: masks[t][i] = 1 when neuron i is active for it, else 0.
    private let masks: Matrix
    /// Row t's active neurons, ascending (rowIDs + t * neuronCount), and how many.
    private let rowIDs: UnsafeMutablePointer<Int32>
    private var rowCounts: [Int]
    /// The union (ascending), each thread's part of it while it is found, and each union
    /// neuron's place in it.
    private let union: UnsafeMutablePointer<Int32>
    private let unionParts: UnsafeMutablePointer<Int32>
    private let unionIndex: UnsafeMutablePointer<Int32>
    /// Gate and up of every union neuron for every row: row t, union place k at [t][k].
    private let gateValues: Matrix
    private let upValues: Matrix
    /// Row t's down coefficients, in the order of its active neurons (and its up values).
    private let coefficients: Matrix
    private let rowUp: Matrix
    private let activations = ActivationBuffers()

    /// What the batches did, per row count.
    private(set) var counts: [Int: SparseBatchCounts] = [:]

    init(mode: SparsityMode, activation: VectorKernels.Activation, pool: ThreadPool, downs: [NeuronMajorMatrix],
         config: ModelConfig, maxRows: Int) {
        self.mode = mode
        self.activation = activation
        self.pool = pool
        self.downs = downs
        neuronCount = config.feedForwardLength
        hiddenLength = config.embeddingLength
        self.maxRows = maxRows
        let n = neuronCount
        masks = Matrix(rows: maxRows, length: n)
        rowIDs = .allocate(capacity: maxRows * n)
        rowCounts = Array(repeating: 0, count: maxRows)
        union = .allocate(capacity: n)
        unionParts = .allocate(capacity: n)
        unionIndex = .allocate(capacity: n)
        gateValues = Matrix(rows: maxRows, length: n)
        upValues = Matrix(rows: maxRows, length: n)
        coefficients = Matrix(rows: maxRows, length: n)
        rowUp = Matrix(rows: maxRows, length: n)
    }

    deinit {
        rowIDs.deallocate()
        union.deallocate()
        unionParts.deallocate()
        unionIndex.deallocate()
    }

    /// The FFN of `layer` for the batch's rows: `input` normed, `pass.x` the residual before
    /// the norm (what predictors read). Returns the active neurons summed over rows.
    func run(_ w: FeedForward, layer: Int, input: Matrix, into output: Matrix, pass: ForwardPass,
             threshold: Float, predictor: ActiveNeuronPredictor?, rule: SparseBatchRule) -> Int {
        let rows = pass.tokenCount, n = neuronCount
        precondition(rows <= maxRows && pass.pool === pool)
        // 1. Each row's own selection. `a` (pass.gate) then holds act(gate) (down:S: act(gate)·up)
        // of every neuron where the mode computes it densely.
        let a = pass.gate, activation = activation
        switch mode {
        case .dense:
            preconditionFailure("dense runs without a sparse FFN")
        case .predictor:
            // Each row's scores are those of the single-token prediction.
            _ = predictor!.activeMasks(layer: layer, inputs: pass.x, count: rows, into: masks, pool: pool)
        case .exact, .threshold:
            pass.linear(input, [(w.gate?.weight ?? w.up.weight, a)])
            pass.addBias(w.gate != nil ? w.gate!.bias : w.up.bias, to: a)
            let exact = mode == .exact
            pass.forEachToken { t in
                VectorKernels.gatedActivation(activation, gate: a.row(t), up: nil, a.row(t), n)
                let row = a.row(t), mask = masks.row(t)
                for i in 0..<n { mask[i] = (exact ? row[i] != 0 : abs(row[i]) >= threshold) ? 1 : 0 }
            }
        case .down:
            pass.linear(input, [(w.gate!.weight, a), (w.up.weight, pass.up)])
            pass.addBias(w.gate!.bias, to: a)
            pass.addBias(w.up.bias, to: pass.up)
            pass.forEachToken { t in
                VectorKernels.gatedActivation(activation, gate: a.row(t), up: pass.up.row(t), a.row(t), n)
                let row = a.row(t), mask = masks.row(t)
                for i in 0..<n { mask[i] = abs(row[i]) >= threshold ? 1 : 0 }
            }
        }
        // 2. The rows' own lists, their union, and whether reading the union sparsely pays.
        let unionCount = findUnion(rows: rows)
        let active = rowCounts.prefix(rows).reduce(0, +)
        let sparse = rule.prefersSparse(unionFraction: Double(unionCount) / Double(n), rows: rows)
        counts[rows, default: SparseBatchCounts()].add(active: active, union: unionCount, dense: !sparse)
        if sparse {
            sparseProducts(w, layer: layer, input: input, rows: rows, unionCount: unionCount, output: output, pass: pass)
        } else {
            denseProducts(w, input: input, output: output, pass: pass)
        }
        return active
    }

    /// Fills each row's list of active neurons, and `union` with the neurons active for any
    /// row (`unionIndex` with their places); returns the union's size.
    private func findUnion(rows: Int) -> Int {
        let n = neuronCount, threads = pool.threadCount
        rowCounts.withUnsafeMutableBufferPointer { rowCounts in
            pool.parallelFor(rows) { range in
                for t in range {
                    let mask = masks.row(t), ids = rowIDs + t * n
                    var count = 0
                    for i in 0..<n where mask[i] != 0 {
                        ids[count] = Int32(i)
                        count += 1
                    }
                    rowCounts[t] = count
                }
            }
        }
        var found = [Int](repeating: 0, count: threads)
        found.withUnsafeMutableBufferPointer { found in
            pool.run { thread in
                let range = ThreadPool.share(of: n, thread: thread, threads: threads, granularity: 64)
                var count = 0
                for i in range {
                    var any = false
                    for t in 0..<rows where masks.row(t)[i] != 0 {
                        any = true
                        break
                    }
                    if any {
                        unionParts[range.lowerBound + count] = Int32(i)
                        count += 1
                    }
                }
                found[thread] = count
            }
        }
        var total = 0
        for thread in 0..<threads {
            let start = ThreadPool.share(of: n, thread: thread, threads: threads, granularity: 64).lowerBound
            (union + total).update(from: unionParts + start, count: found[thread])
            total += found[thread]
        }
        for k in 0..<total { unionIndex[Int(union[k])] = Int32(k) }
        return total
    }

    /// Gate and up of the union for every row (each union row read once), each row's
    /// coefficients from its own neurons' values, then the down rows of the union tile by
    /// tile, each row summing only its own neurons in a single token's order.
    private func sparseProducts(_ w: FeedForward, layer: Int, input: Matrix, rows: Int, unionCount: Int,
                                output: Matrix, pass: ForwardPass) {
        let d = hiddenLength, n = neuronCount, threads = pool.threadCount
        let gate = w.gate?.weight, up = w.up.weight
        // Gathered: the predictor needs gate and up of the union; exact and threshold:S have
        // the gate from their selection and need up (gated FFNs); down:S has everything.
        let gatherUp: Bool, gatherGate: Bool
        switch mode {
        case .predictor: (gatherUp, gatherGate) = (true, gate != nil)
        case .exact, .threshold: (gatherUp, gatherGate) = (gate != nil, false)
        default: (gatherUp, gatherGate) = (false, false)
        }
        let upInput = gatherUp ? activations.buffer(type: up.activationType, length: d, capacity: maxRows) : nil
        let gateInput = gatherGate
            ? (gate!.activationType == up.activationType ? upInput : activations.buffer(type: gate!.activationType, length: d, capacity: maxRows))
            : nil
        var distinct: [ActivationBuffer] = []
        for case let buffer? in [upInput, gateInput] where !distinct.contains(where: { $0 === buffer }) { distinct.append(buffer) }
        if !distinct.isEmpty {
            pool.parallelFor(rows) { range in
                for buffer in distinct { for t in range { buffer.store(input.row(t), at: t) } }
            }
            let g = gateValues, u = upValues, union = union
            let products: [(matrix: WeightMatrix?, input: ActivationBuffer?, values: Matrix, bias: FloatVector?)] =
                [(up, upInput, u, w.up.bias), (gate, gateInput, g, w.gate?.bias)]
            pool.run { thread in
                let share = ThreadPool.share(of: unionCount, thread: thread, threads: threads)
                guard !share.isEmpty else { return }
                let ids = union + share.lowerBound, count = share.count, first = share.lowerBound
                for (matrix, buffer, values, bias) in products {
                    guard let matrix, let buffer else { continue }
                    ember_matmul_gather(Int32(matrix.type.rawValue), Int64(matrix.columns), matrix.data, matrix.rowBytes, buffer.bytes,
                                        buffer.stride, Int64(rows), ids, Int64(count), values.pointer + first, Int64(n))
                    if let bias {
                        for t in 0..<rows { SparseFeedForward.addGathered(bias.pointer, rows: ids, count: count, into: values.row(t) + first) }
                    }
                }
            }
        }
        // Coefficients: the single-token path's values, in its order. The activation gives a
        // neuron the same bits wherever a range of values starts or ends (its vector code covers
        // the tails), so one call per row stands for the single token's per-thread shares.
        let mode = mode, activation = activation, gated = gate != nil, dense = pass.gate
        rowCounts.withUnsafeBufferPointer { rowCounts in
            pool.parallelFor(rows) { range in
                for t in range {
                    let ids = rowIDs + t * n, count = rowCounts[t], c = coefficients.row(t)
                    switch mode {
                    case .predictor:
                        let g = gateValues.row(t), u = upValues.row(t), uc = rowUp.row(t)
                        for k in 0..<count {
                            let place = Int(unionIndex[Int(ids[k])])
                            uc[k] = u[place]
                            if gated { c[k] = g[place] }
                        }
                        if gated {
                            VectorKernels.gatedActivation(activation, gate: c, up: uc, c, count)
                        } else {
                            VectorKernels.gatedActivation(activation, gate: uc, up: nil, c, count)
                        }
                    case .exact, .threshold:
                        let selected = dense.row(t), u = upValues.row(t), rectify = activation.rectifiesUp
                        for k in 0..<count {
                            let i = Int(ids[k])
                            if gated {
                                let value = u[Int(unionIndex[i])]
                                c[k] = selected[i] * (rectify ? max(value, 0) : value)
                            } else {
                                c[k] = selected[i]
                            }
                        }
                    default:
                        let selected = dense.row(t)
                        for k in 0..<count { c[k] = selected[Int(ids[k])] }
                    }
                }
            }
        }
        runDown(layer: layer, rows: rows, unionCount: unionCount, bias: w.down.bias, output: output)
    }

    /// Union neurons whose down rows (of a thread's slice of the hidden dimension) are applied
    /// to every row while they sit in L2: 64 rows of a 4096-wide Q8_0 slice on two threads
    /// are 139 KB.
    private static let downTile = 64

    /// output[t] = Σ over row t's neurons of coefficient · down row, plus down's bias. Threads
    /// split the hidden dimension as a single token's down does (SparseFeedForward.runDown: each
    /// owns its columns, nothing to reduce); within its columns, row t's neurons are added in
    /// their order, a tile of the union at a time.
    private func runDown(layer: Int, rows: Int, unionCount: Int, bias: FloatVector?, output: Matrix) {
        let down = downs[layer].weights, n = neuronCount, threads = pool.threadCount
        let block = down.type.blockSize
        let granularity = block >= 64 ? block : (64 + block - 1) / block * block
        // A row's neurons go to the column gather in whole groups of the rows it takes per pass,
        // from its first, as in a single token's one call, so the sums group exactly as there.
        let type = Int32(down.type.rawValue), tile = Self.downTile, group = Int(ember_axpy_group(type))
        let union = union, rowIDs = rowIDs, coefficients = coefficients
        rowCounts.withUnsafeBufferPointer { rowCounts in
            pool.run { thread in
                let columns = ThreadPool.share(of: down.columns, thread: thread, threads: threads, granularity: granularity)
                guard !columns.isEmpty else { return }
                let lo = columns.lowerBound, width = columns.count
                let slice = down.data + lo / block * down.type.blockBytes
                for t in 0..<rows { (output.row(t) + lo).initialize(repeating: 0, count: width) }
                var done = [Int](repeating: 0, count: rows)
                var first = 0
                while first < unionCount {
                    let last = min(first + tile, unionCount)
                    let lastID = union[last - 1]
                    for t in 0..<rows {
                        let ids = rowIDs + t * n, c = coefficients.row(t), count = rowCounts[t]
                        var end = done[t]
                        while end < count && ids[end] <= lastID { end += 1 }
                        // Whole groups now; a partial group only when it is the row's last.
                        let stop = end == count ? end : end / group * group
                        if stop > done[t] {
                            ember_axpy_gather(type, Int64(width), slice, down.rowBytes, ids + done[t], c + done[t],
                                              Int64(stop - done[t]), output.row(t) + lo)
                            done[t] = stop
                        }
                    }
                    first = last
                }
                if let bias { for t in 0..<rows { VectorKernels.add(bias.pointer + lo, into: output.row(t) + lo, width) } }
            }
        }
    }

    /// The rows' selections applied to the dense products: what the rest of the FFN costs
    /// when the union covers most neurons (the computation of `maskedFeedForward`).
    private func denseProducts(_ w: FeedForward, input: Matrix, output: Matrix, pass: ForwardPass) {
        let n = neuronCount, a = pass.gate, activation = activation, masks = masks
        switch mode {
        case .predictor:
            if let gate = w.gate {
                pass.linear(input, [(gate.weight, a), (w.up.weight, pass.up)])
                pass.addBias(gate.bias, to: a)
                pass.addBias(w.up.bias, to: pass.up)
            } else {
                pass.linear(input, [(w.up.weight, a)])
                pass.addBias(w.up.bias, to: a)
            }
            let gated = w.gate != nil
            pass.forEachToken { t in
                VectorKernels.gatedActivation(activation, gate: a.row(t), up: nil, a.row(t), n)
                if gated { VectorKernels.multiplyUp(activation, a.row(t), by: pass.up.row(t), n) }
            }
        case .exact, .threshold:
            if w.gate != nil {
                pass.linear(input, [(w.up.weight, pass.up)])
                pass.addBias(w.up.bias, to: pass.up)
                pass.forEachToken { t in VectorKernels.multiplyUp(activation, a.row(t), by: pass.up.row(t), n) }
            }
        default:
            break
        }
        pass.forEachToken { t in VectorKernels.multiply(a.row(t), by: masks.row(t), n) }
        pass.down(w.down, a, into: output)
    }
}

/// When the union of a batch's active sets is read sparsely and when densely: sparse while the
/// union's share of the neurons is at most the crossover of the batch's row count.
///
/// Measured with `ember bench -m synthetic-7b-relu-0.9-q4_0.gguf -t 2 --batch-ffn ROWS
/// --row-share S -r 3` (one 7B layer's batched sparse FFN against the dense products with the
/// same masks, alternating, over rotating layers; 2 shared cores, load average 11):
/// - rows with 10 % of the neurons each (the synthetic model's activity): sparse was faster at
///   every union share up to 100 % for 2-128 rows (1.2-1.4x at 100 % for 8-128 rows: each
///   row's down still reads only its own neurons), except 4 rows, even at 94 %;
/// - rows with 50 % each: crossovers at a union of 77 % (4 rows), 90 % (32) and 94 % (128).
/// The rule takes the 50 % crossovers (the costlier rows), 4 rows' for 2 rows too.
struct SparseBatchRule: Sendable, Equatable {
    /// (rows, largest union share at which sparse is still faster), ascending in rows; a row
    /// count between two entries takes the smaller one's, beyond the last the last's.
    var crossovers: [Crossover]

    struct Crossover: Sendable, Equatable {
        var rows: Int
        var fraction: Double
    }

    static let measured = SparseBatchRule(crossovers: [.init(rows: 2, fraction: 0.77), .init(rows: 32, fraction: 0.90),
                                                       .init(rows: 128, fraction: 0.94)])
    /// Always sparse / always dense (tests and benchmarks of the two paths).
    static let alwaysSparse = SparseBatchRule(crossovers: [.init(rows: 1, fraction: 1)])
    static let alwaysDense = SparseBatchRule(crossovers: [.init(rows: 1, fraction: -1)])

    func maxUnionFraction(rows: Int) -> Double {
        crossovers.last { $0.rows <= rows }?.fraction ?? crossovers.first?.fraction ?? 1
    }

    func prefersSparse(unionFraction: Double, rows: Int) -> Bool { unionFraction <= maxUnionFraction(rows: rows) }
}

/// What batches of one row count did, summed over their layer passes.
public struct SparseBatchCounts: Sendable, Equatable {
    /// Layer passes (steps × layers).
    public var passes = 0
    /// Active (row, neuron) pairs, and union neurons.
    public var activeNeurons = 0
    public var unionNeurons = 0
    /// Passes the rule sent to the dense products.
    public var densePasses = 0

    public init() {}

    mutating func add(active: Int, union: Int, dense: Bool) {
        passes += 1
        activeNeurons += active
        unionNeurons += union
        if dense { densePasses += 1 }
    }
}
