import Foundation

/// Where the batched sparse FFN stops paying: on the model's own layers, for batches of
/// `rows` rows whose active sets make a union of a given share of the neurons, the batched
/// sparse FFN against the dense products with the same masks (the two ways
/// `BatchedSparseFeedForward` can run a batch), timed alternately over rotating layers.
public struct BatchCrossoverReport: Sendable {
    public struct Point: Sendable {
        public var rows: Int
        public var unionFraction: Double
        /// Median µs of one layer's FFN.
        public var sparseMicroseconds: Double
        public var denseMicroseconds: Double
    }

    /// Each row's own active share (the union is made of such sets).
    public var rowShare: Double
    public var points: [Point]

    /// Per row count, the largest union share where sparse is still faster: linear between
    /// the last faster and the first slower point (0 when never faster, 1 when always).
    public var crossovers: [(rows: Int, fraction: Double)] {
        Dictionary(grouping: points, by: \.rows).keys.sorted().map { rows in
            let line = points.filter { $0.rows == rows }.sorted { $0.unionFraction < $1.unionFraction }
            guard let slower = line.firstIndex(where: { $0.sparseMicroseconds >= $0.denseMicroseconds }) else { return (rows, 1) }
            guard slower > 0 else { return (rows, 0) }
            let a = line[slower - 1], b = line[slower]
            let ra = a.sparseMicroseconds / a.denseMicroseconds, rb = b.sparseMicroseconds / b.denseMicroseconds
            let t = rb == ra ? 0 : (1 - ra) / (rb - ra)
            return (rows, a.unionFraction + t * (b.unionFraction - a.unionFraction))
        }
    }
}

/// Several sequences decoded together, one token each per step: tokens/s of the batched
/// sparse FFN (always sparse, and under the measured rule) against the dense FFN, with the
/// union's growth.
public struct BatchedDecodeReport: Sendable {
    public struct Row: Sendable {
        public var rows: Int
        /// Generated tokens/s (all sequences) of each repetition.
        public var sparse: [Double]
        public var rule: [Double]
        public var dense: [Double]
        /// Mean over layers and steps: each row's active share, and the union's share.
        public var rowActiveFraction: Double
        public var unionFraction: Double
        /// Share of layer passes the measured rule sent to the dense products.
        public var ruleDenseShare: Double
    }

    public var mode: SparsityMode
    public var promptTokens: Int
    public var steps: Int
    public var rows: [Row]
}

/// A predictor whose masks are set from outside (the crossover benchmark plants unions).
private final class PlantedMasks: ActiveNeuronPredictor {
    let masks: Matrix
    init(rows: Int, neurons: Int) { masks = Matrix(rows: rows, length: neurons) }

    func activeNeurons(layer: Int, input: UnsafePointer<Float>, into: UnsafeMutablePointer<Int32>, pool: ThreadPool?) -> Int {
        var count = 0
        for i in 0..<masks.length where masks.row(0)[i] != 0 {
            into[count] = Int32(i)
            count += 1
        }
        return count
    }

    func activeMasks(layer: Int, inputs: Matrix, count: Int, into: Matrix, pool: ThreadPool?) -> Int {
        into.pointer.update(from: masks.pointer, count: count * masks.length)
        return (0..<count * masks.length).reduce(0) { $0 + (masks.pointer[$1] != 0 ? 1 : 0) }
    }

    var byteCount: Int { 0 }
}

extension Context {
    /// The crossover measurement (see `BatchCrossoverReport`): for each row count and union
    /// share, `repetitions` timings of each path.
    func batchCrossovers(rowCounts: [Int], fractions: [Double], rowShare: Double, repetitions: Int) throws -> BatchCrossoverReport {
        let config = model.config, n = config.feedForwardLength, d = config.embeddingLength
        guard let most = rowCounts.max(), most <= pass.maxTokens, rowCounts.allSatisfy({ $0 >= 2 }) else {
            throw SessionError.invalidOption("batch row counts must be in 2...\(pass.maxTokens) (the batch size)")
        }
        guard fractions.allSatisfy({ $0 > 0 && $0 <= 1 }), rowShare > 0, rowShare <= 1 else {
            throw SessionError.invalidOption("union and row shares must be in (0, 1]")
        }
        let planted = PlantedMasks(rows: most, neurons: n)
        let execution = try SparseExecution(mode: .predictor, model: model, statistics: nil, predictor: planted, pool: pool)
        let previous = pass.sparsity
        defer { pass.sparsity = previous }
        pass.sparsity = execution
        var random = SplitMix64(seed: 11)
        let caches = (0..<most).map { _ in KVCache(config: config, capacity: 1, type: cache.type) }
        // Inputs at the scale of a normed residual (unit variance).
        let input = Matrix(rows: most, length: d)
        for i in 0..<most * d { input.pointer[i] = Float.random(in: -1.7...1.7, using: &random) }
        var points: [BatchCrossoverReport.Point] = []
        var layer = 0
        for rows in rowCounts {
            pass.begin(rows: caches.prefix(rows).map { BatchRow(token: 0, cache: $0, position: 0) },
                       embedding: model.architecture.embedding)
            for fraction in fractions {
                // A union of the share asked for, covered by the rows' sets of `rowShare` each
                // (larger when the rows must share out a larger union).
                let union = Array((0..<n).shuffled(using: &random).prefix(max(1, Int((fraction * Double(n)).rounded()))))
                let own = min(union.count, max((union.count + rows - 1) / rows, Int((rowShare * Double(n)).rounded())))
                planted.masks.pointer.update(repeating: 0, count: most * n)
                for t in 0..<rows {
                    let mask = planted.masks.row(t)
                    var placed = 0
                    for k in stride(from: t, to: union.count, by: rows) where placed < own {
                        mask[union[k]] = 1
                        placed += 1
                    }
                    for i in union.shuffled(using: &random) where placed < own && mask[i] == 0 {
                        mask[i] = 1
                        placed += 1
                    }
                }
                var times: [[Double]] = [[], []]
                for repetition in 0..<repetitions {
                    for path in repetition % 2 == 0 ? [0, 1] : [1, 0] {
                        execution.batchRule = path == 0 ? .alwaysSparse : .alwaysDense
                        let l = layer
                        layer = (layer + 1) % config.layerCount
                        let start = DispatchTime.now()
                        execution.feedForward(model.architecture.feedForward(l), layer: l, input: input, into: pass.projected, pass: pass)
                        times[path].append(seconds(since: start) * 1e6)
                    }
                }
                points.append(.init(rows: rows, unionFraction: Double(union.count) / Double(n),
                                    sparseMicroseconds: Statistics.median(times[0]), denseMicroseconds: Statistics.median(times[1])))
            }
        }
        return BatchCrossoverReport(rowShare: rowShare, points: points)
    }

    /// Batched decoding (see `BatchedDecodeReport`): per row count, that many sequences read
    /// their own `promptTokens`-token prompt, then each repetition decodes `steps` greedy
    /// tokens of every sequence in one forward pass per step, once per variant (always sparse,
    /// the measured rule, dense), the variants taking turns.
    func batchedDecodeBenchmark(rowCounts: [Int], promptTokens: Int, steps: Int, repetitions: Int,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> BatchedDecodeReport {
        guard let sparse else { throw SessionError.invalidOption("the batched decode benchmark compares a sparse mode with dense: give --sparsity") }
        let config = model.config, n = config.feedForwardLength
        guard let most = rowCounts.max(), most <= pass.maxTokens, rowCounts.allSatisfy({ $0 >= 1 }) else {
            throw SessionError.invalidOption("batch row counts must be in 1...\(pass.maxTokens) (the batch size)")
        }
        guard promptTokens >= 1, steps >= 1, promptTokens + steps <= contextLength else {
            throw ModelError.contextOverflow(needed: promptTokens + steps, context: contextLength)
        }
        let previousRule = sparse.batchRule
        defer {
            sparse.batchRule = previousRule
            pass.sparsity = sparse
        }
        var random = SplitMix64(seed: 42)
        let logits = Matrix(rows: most, length: config.vocabularySize)
        var report: [BatchedDecodeReport.Row] = []
        var done = 0
        for rows in rowCounts {
            let caches = (0..<rows).map { _ in KVCache(config: config, capacity: promptTokens + steps, type: cache.type) }
            var firsts: [Int32] = []
            pass.sparsity = nil  // prompts are not what is measured
            for cache in caches {
                let prompt = (0..<promptTokens).map { _ in Int32(random.next() % UInt64(config.vocabularySize)) }
                try model.forward(batch: prompt.enumerated().map { BatchRow(token: $1, cache: cache, position: $0) },
                                  pass: pass, logitRows: [promptTokens - 1], into: logits)
                firsts.append(logits.array(row: 0).withUnsafeBufferPointer { argmax($0) })
            }
            var tps: [[Double]] = [[], [], []]
            var active = 0, union = 0, passes = 0, rulePasses = 0, ruleDense = 0
            for repetition in 0..<repetitions {
                for variant in [0, 1, 2].rotated(by: repetition) {
                    pass.sparsity = variant == 2 ? nil : sparse
                    sparse.batchRule = variant == 0 ? .alwaysSparse : .measured
                    let before = sparse.batchCounts[rows] ?? SparseBatchCounts()
                    let slotsBefore = sparse.neuronSlots, activeBefore = sparse.activeNeurons
                    for cache in caches { cache.truncate(to: promptTokens) }
                    var tokens = firsts
                    let start = DispatchTime.now()
                    for step in 0..<steps {
                        try model.forward(batch: (0..<rows).map {
                            BatchRow(token: tokens[$0], cache: caches[$0], position: promptTokens + step)
                        }, pass: pass, logitRows: Array(0..<rows), into: logits)
                        tokens = (0..<rows).map { argmax(UnsafeBufferPointer(start: logits.row($0), count: logits.length)) }
                    }
                    tps[variant].append(Double(rows * steps) / seconds(since: start))
                    let after = sparse.batchCounts[rows] ?? SparseBatchCounts()
                    if variant == 0 {
                        // One row runs the single-token decoder: its union is its own set.
                        active += rows == 1 ? sparse.activeNeurons - activeBefore : after.activeNeurons - before.activeNeurons
                        union += rows == 1 ? sparse.activeNeurons - activeBefore : after.unionNeurons - before.unionNeurons
                        passes += rows == 1 ? (sparse.neuronSlots - slotsBefore) / n : after.passes - before.passes
                    } else if variant == 1 {
                        rulePasses += rows == 1 ? 1 : after.passes - before.passes
                        ruleDense += after.densePasses - before.densePasses
                    }
                }
                done += 1
                progress(done, rowCounts.count * repetitions)
            }
            report.append(.init(rows: rows, sparse: tps[0], rule: tps[1], dense: tps[2],
                                rowActiveFraction: Double(active) / Double(max(1, passes * rows * n)),
                                unionFraction: Double(union) / Double(max(1, passes * n)),
                                ruleDenseShare: Double(ruleDense) / Double(max(1, rulePasses))))
        }
        return BatchedDecodeReport(mode: sparse.mode, promptTokens: promptTokens, steps: steps, rows: report)
    }
}

private extension Array {
    func rotated(by k: Int) -> [Element] {
        guard !isEmpty else { return self }
        let s = k % count
        return Array(self[s...] + self[..<s])
    }
}

extension Session {
    /// See `BatchCrossoverReport`.
    public func batchCrossovers(rowCounts: [Int], fractions: [Double], rowShare: Double, repetitions: Int) throws -> BatchCrossoverReport {
        try context.batchCrossovers(rowCounts: rowCounts, fractions: fractions, rowShare: rowShare, repetitions: repetitions)
    }

    /// See `BatchedDecodeReport`.
    public func batchedDecodeBenchmark(rowCounts: [Int], promptTokens: Int, steps: Int, repetitions: Int,
                                       progress: (@Sendable (Int, Int) -> Void)? = nil) throws -> BatchedDecodeReport {
        try context.batchedDecodeBenchmark(rowCounts: rowCounts, promptTokens: promptTokens, steps: steps,
                                           repetitions: repetitions) { progress?($0, $1) }
    }
}
