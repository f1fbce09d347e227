import Foundation

/// Guesses a layer's active neurons from the FFN's pre-norm input (a trained predictor).
protocol ActiveNeuronPredictor: AnyObject {
    /// Writes the ids of the neurons predicted active for `input` to `into` (room for every
    /// neuron) and returns how many there are; `pool` (nil: the calling thread) shares the work.
    func activeNeurons(layer: Int, input: UnsafePointer<Float>, into: UnsafeMutablePointer<Int32>, pool: ThreadPool?) -> Int
    /// For `count` tokens (rows of `inputs`): masks[t][i] = 1 when neuron i is predicted
    /// active for token t, else 0; returns how many are active in all. Each row's scores are
    /// exactly those `activeNeurons` computes for it alone.
    func activeMasks(layer: Int, inputs: Matrix, count: Int, into masks: Matrix, pool: ThreadPool?) -> Int
    /// Bytes of predictor weights read per token.
    var byteCount: Int { get }
}

/// Ember's trained predictors (and PowerInfer's) are such predictors.
extension PredictorSet: ActiveNeuronPredictor {
    var byteCount: Int { layers.reduce(0) { $0 + ($1.map { $0.fc1.byteCount + $0.fc2.byteCount } ?? 0) } }
}

public enum SparseExecutionError: Error, CustomStringConvertible, Equatable, LocalizedError {
    case needsStatistics(SparsityMode)
    case needsPredictor
    case needsReLU
    case needsGatedFFN(SparsityMode)
    case targetMissing(Float, available: [Float])
    case statisticsMismatch(String)
    case hybridNeedsPredictor

    public var description: String {
        switch self {
        case .needsStatistics(let mode):
            return "\(mode) sparsity needs activation statistics of the model (made by profiling it on a text)"
        case .needsPredictor:
            return "predictor sparsity needs a predictor file (trained from the model's activation statistics)"
        case .needsReLU:
            return "exact sparsity is exact only for ReLU-family models; this model's FFN is not ReLU (nor dReLU): use threshold:S, down:S or predictor"
        case .needsGatedFFN(let mode):
            return "\(mode) sparsity needs a gated FFN (SwiGLU/GeGLU)"
        case .targetMissing(let s, let available):
            return "the statistics have no thresholds for sparsity \(s); profiled targets: \(available.map { "\($0)" }.joined(separator: ", "))"
        case .statisticsMismatch(let detail):
            return "the statistics do not fit this model: \(detail)"
        case .hybridNeedsPredictor:
            return "hybrid execution (a device memory budget) needs predictor sparsity: the active set must be known before the devices start"
        }
    }

    public var errorDescription: String? { description }
}

/// A fast device and, per layer, the FFN neurons it holds (model neuron ids, any order), and
/// the dense blocks it runs: layers' attention and maybe the output head (the engine's
/// DeviceDenseBlocks, not the FFN's business).
struct HybridPlacement {
    let device: OpenCLDevice
    let deviceNeurons: [[Int32]]
    let attentionLayers: [Int]
    let outputHead: Bool

    init(device: OpenCLDevice, deviceNeurons: [[Int32]], attentionLayers: [Int] = [], outputHead: Bool = false) {
        self.device = device
        self.deviceNeurons = deviceNeurons
        self.attentionLayers = attentionLayers
        self.outputHead = outputHead
    }
}

/// Runs the FFN with the neurons `mode` selects. Every mode has one meaning, whatever the
/// batch: a neuron left out contributes exactly zero. Single-token decode computes only the
/// selected neurons (SparseDecoder); batches of several rows (sequences decoded together,
/// prompt chunks) read the union of their rows' sets, or run the dense products with the
/// left-out neurons zeroed when the union is too large (BatchedSparseFeedForward).
final class SparseExecution: FeedForwardSparsity {
    let mode: SparsityMode
    private let config: ModelConfig
    /// Per layer: the threshold a neuron's |act(gate)| (threshold:S, exact: 0) or
    /// |act(gate)·up| (down:S) must reach.
    private let thresholds: [Float]
    private let predictor: ActiveNeuronPredictor?
    /// The pool decode-time predictions run on: nil (one thread) for small predictors, where
    /// handing work to the other threads costs more than it saves (SmolLM2: 0.3 MB a layer),
    /// the pool for large ones that one thread cannot read at full bandwidth (7B: 1.9 MB).
    private let predictorPool: ThreadPool?
    static let threadedPredictorBytes = 1 << 20
    private let decoder: SparseDecoder?
    /// Scratch for the predictor's masks of a batch.
    private var predictorMasks: Matrix?
    /// Batches of several rows (sequences decoded together, prompts): the union of their
    /// rows' sets, made at the first such batch.
    private var batched: BatchedSparseFeedForward?
    /// When such a batch's union is read sparsely, when densely.
    var batchRule = SparseBatchRule.measured

    /// What batches of several rows did, by row count (empty when none ran).
    var batchCounts: [Int: SparseBatchCounts] { batched?.counts ?? [:] }

    /// Neurons computed and neuron slots seen, over all layers and tokens so far.
    private(set) var activeNeurons = 0
    private(set) var neuronSlots = 0
    /// The share of FFN neurons skipped so far.
    var reachedSparsity: Double { neuronSlots == 0 ? 0 : 1 - Double(activeNeurons) / Double(neuronSlots) }

    /// Hybrid runs: what each side did for decoded tokens so far.
    var hybrid: HybridCounts { decoder?.hybridCounts ?? HybridCounts() }
    /// The device and placement of a hybrid run (nil: CPU only).
    let hybridPlacement: HybridPlacement?
    var hybridDevice: OpenCLDevice? { hybridPlacement?.device }

    /// Starts counting `activeNeurons`, `neuronSlots` and `hybrid` afresh.
    func resetCounts() {
        activeNeurons = 0
        neuronSlots = 0
        decoder?.hybridCounts = HybridCounts(failure: decoder?.hybridCounts.failure)
    }

    /// Bytes of weights a decoded token reads at the sparsity reached so far: the dense
    /// figure, with the matrices this mode reads per selected neuron counted at the share
    /// selected (down from its neuron-major copy), plus the predictors.
    func weightBytesPerToken(_ model: LanguageModel) -> Int {
        var total = Double(model.bytesPerToken)
        let selected = 1 - reachedSparsity
        for l in 0..<model.layerCount {
            let f = model.architecture.feedForward(l)
            var gathered = 0
            switch mode {
            case .dense: continue
            case .exact: gathered = f.gate == nil ? 0 : f.up.weight.byteCount
            case .threshold: gathered = f.up.weight.byteCount
            case .down: gathered = 0
            case .predictor: gathered = (f.gate?.weight.byteCount ?? 0) + f.up.weight.byteCount
            }
            let down = decoder?.downByteCount(layer: l) ?? f.down.weight.byteCount
            total += (selected - 1) * Double(gathered) + selected * Double(down) - Double(f.down.weight.byteCount)
        }
        return Int(total) + (predictor?.byteCount ?? 0)
    }

    /// `hybrid`: a device takes its placed neurons' share of each decoded token's FFN
    /// (predictor mode only).
    init(mode: SparsityMode, model: LanguageModel, statistics: ActivationStatistics?,
                predictor: ActiveNeuronPredictor?, pool: ThreadPool, hybrid: HybridPlacement? = nil) throws {
        self.mode = mode
        config = model.config
        let layers = config.layerCount
        let feedForwards = (0..<layers).map { model.architecture.feedForward($0) }
        let gated = feedForwards.allSatisfy { $0.gate != nil }
        switch mode {
        case .dense:
            thresholds = Array(repeating: 0, count: layers)
        case .exact:
            guard config.activation.isReLU else { throw SparseExecutionError.needsReLU }
            thresholds = Array(repeating: 0, count: layers)
        case .threshold(let s), .down(let s):
            guard gated else { throw SparseExecutionError.needsGatedFFN(mode) }
            guard let statistics else { throw SparseExecutionError.needsStatistics(mode) }
            guard statistics.layers.count == layers, statistics.feedForwardLength == config.feedForwardLength else {
                throw SparseExecutionError.statisticsMismatch(
                    "\(statistics.layers.count) layers of \(statistics.feedForwardLength) neurons, the model has \(layers) of \(config.feedForwardLength)")
            }
            guard let t = statistics.targetIndex(for: s) else {
                throw SparseExecutionError.targetMissing(s, available: statistics.sparsityTargets)
            }
            if case .threshold = mode {
                thresholds = statistics.layers.map { $0.gateThresholds[t] }
            } else {
                thresholds = statistics.layers.map { $0.downThresholds[t] }
            }
        case .predictor:
            guard predictor != nil else { throw SparseExecutionError.needsPredictor }
            thresholds = Array(repeating: 0, count: layers)
        }
        self.predictor = predictor
        let bytesPerLayer = (predictor?.byteCount ?? 0) / max(1, layers)
        predictorPool = bytesPerLayer >= Self.threadedPredictorBytes && pool.threadCount > 1 ? pool : nil
        if hybrid != nil, mode != .predictor { throw SparseExecutionError.hybridNeedsPredictor }
        hybridPlacement = hybrid
        decoder = try SparseDecoder.make(mode: mode, model: model, pool: pool, hybrid: hybrid)
    }

    func feedForward(_ f: FeedForward, layer: Int, input: Matrix, into output: Matrix, pass: ForwardPass) {
        if pass.tokenCount == 1, let decoder {
            let count = decoder.run(f, layer: layer, input: input, output: output, pass: pass,
                                    threshold: thresholds[layer], predictor: predictor, predictorPool: predictorPool)
            activeNeurons += count
            neuronSlots += config.feedForwardLength
            return
        }
        if let decoder {
            // Several rows (sequences decoded together, a prompt chunk): their union, or the
            // dense products when the union is too large (`batchRule`).
            if batched == nil || batched!.maxRows < pass.maxTokens {
                batched = BatchedSparseFeedForward(mode: mode, activation: config.activation, pool: pass.pool, downs: decoder.downs,
                                                   config: config, maxRows: pass.maxTokens)
            }
            activeNeurons += batched!.run(f, layer: layer, input: input, into: output, pass: pass,
                                          threshold: thresholds[layer], predictor: predictor, rule: batchRule)
            neuronSlots += config.feedForwardLength * pass.tokenCount
            return
        }
        maskedFeedForward(f, layer: layer, input: input, into: output, pass: pass)
    }

    /// Dense gate and up, left-out neurons zeroed, dense down: the batch path, and the
    /// reference the decode path must equal. A left-out neuron contributes nothing whatever
    /// its biases; down's bias is added once.
    func maskedFeedForward(_ w: FeedForward, layer: Int, input: Matrix, into output: Matrix, pass: ForwardPass) {
        let n = config.feedForwardLength
        let activation = w.activation
        let threshold = thresholds[layer]
        if let gate = w.gate {
            pass.linear(input, [(gate.weight, pass.gate), (w.up.weight, pass.up)])
            pass.addBias(gate.bias, to: pass.gate)
            pass.addBias(w.up.bias, to: pass.up)
        } else {
            pass.linear(input, [(w.up.weight, pass.gate)])
            pass.addBias(w.up.bias, to: pass.gate)
        }
        var counts = Array(repeating: 0, count: pass.tokenCount)
        let mode = self.mode
        var masks: Matrix?
        if mode == .predictor {
            if predictorMasks?.rows ?? 0 < pass.tokenCount { predictorMasks = Matrix(rows: pass.maxTokens, length: n) }
            masks = predictorMasks
            _ = predictor!.activeMasks(layer: layer, inputs: pass.x, count: pass.tokenCount, into: masks!, pool: pass.pool)
        }
        counts.withUnsafeMutableBufferPointer { counts in
            pass.forEachToken { t in
                let a = pass.gate.row(t)
                VectorKernels.gatedActivation(activation, gate: a, up: nil, a, n)
                let up: UnsafeMutablePointer<Float>? = w.gate != nil ? pass.up.row(t) : nil
                var active = 0
                switch mode {
                case .dense:
                    if let up { VectorKernels.multiplyUp(activation, a, by: up, n) }
                    active = n
                case .exact:
                    for i in 0..<n where a[i] != 0 { active += 1 }
                    if let up { VectorKernels.multiplyUp(activation, a, by: up, n) }
                case .threshold:
                    for i in 0..<n {
                        if abs(a[i]) >= threshold {
                            if let up { a[i] *= activation.rectifiesUp ? max(up[i], 0) : up[i] }
                            active += 1
                        } else {
                            a[i] = 0
                        }
                    }
                case .down:
                    if let up { VectorKernels.multiplyUp(activation, a, by: up, n) }
                    for i in 0..<n {
                        if abs(a[i]) >= threshold { active += 1 } else { a[i] = 0 }
                    }
                case .predictor:
                    let mask = masks!.row(t)
                    if let up { VectorKernels.multiplyUp(activation, a, by: up, n) }
                    for i in 0..<n {
                        a[i] *= mask[i]
                        if mask[i] != 0 { active += 1 }
                    }
                }
                counts[t] = active
            }
        }
        activeNeurons += counts.reduce(0, +)
        neuronSlots += n * pass.tokenCount
        pass.down(w.down, pass.gate, into: output)
    }
}

/// The single-token sparse FFN: computes only the selected neurons. Selection costs a dense
/// gate (exact, threshold:S), a dense gate and up (down:S) or the predictor; what follows reads
/// only the selected neurons' rows of up (and gate) and their down columns, kept neuron-major
/// (the file's own when it stores down that way, else a transposed copy).
final class SparseDecoder {
    private let mode: SparsityMode
    private let activation: VectorKernels.Activation
    private let pool: ThreadPool
    /// Each layer's down projection, neuron-major (shared with batches of several sequences).
    let downs: [NeuronMajorMatrix]
    private let workspace: SparseFeedForward.Workspace
    private let ids: UnsafeMutablePointer<Int32>
    private let coefficients: UnsafeMutablePointer<Float>
    private let upValues: UnsafeMutablePointer<Float>

    /// The device's half of hybrid runs (nil: CPU only, or the device failed).
    private var device: DeviceFeedForward?
    var hybridCounts = HybridCounts()
    private let deviceRows: UnsafeMutablePointer<Int32>
    private let cpuNeurons: UnsafeMutablePointer<Int32>

    static func make(mode: SparsityMode, model: LanguageModel, pool: ThreadPool, hybrid: HybridPlacement?) throws -> SparseDecoder? {
        mode == .dense ? nil : try SparseDecoder(mode: mode, model: model, pool: pool, hybrid: hybrid)
    }

    private init(mode: SparsityMode, model: LanguageModel, pool: ThreadPool, hybrid: HybridPlacement?) throws {
        self.mode = mode
        self.pool = pool
        activation = model.config.activation
        let f = model.config.feedForwardLength, d = model.config.embeddingLength
        let feedForwards = (0..<model.layerCount).map { model.architecture.feedForward($0) }
        downs = try feedForwards.map { f in
            try f.down.neuronMajor ?? NeuronMajorMatrix(transposing: f.down.weight, pool: pool)
        }
        workspace = SparseFeedForward.Workspace(threads: pool.threadCount, hiddenLength: d, neuronCount: f)
        ids = .allocate(capacity: f)
        coefficients = .allocate(capacity: f)
        upValues = .allocate(capacity: f)
        deviceRows = .allocate(capacity: f)
        cpuNeurons = .allocate(capacity: f)
        device = try hybrid.map {
            try DeviceFeedForward(device: $0.device, feedForwards: feedForwards, activation: activation, downs: downs,
                                  deviceNeurons: $0.deviceNeurons)
        }
    }

    func downByteCount(layer: Int) -> Int { downs[layer].weights.byteCount }

    deinit {
        ids.deallocate()
        coefficients.deallocate()
        upValues.deallocate()
        deviceRows.deallocate()
        cpuNeurons.deallocate()
    }

    /// Computes the FFN of the batch's single token on `input` into `output`; returns how many
    /// neurons it computed.
    func run(_ w: FeedForward, layer: Int, input inputs: Matrix, output outputs: Matrix,
             pass: ForwardPass, threshold: Float, predictor: ActiveNeuronPredictor?, predictorPool: ThreadPool?) -> Int {
        let n = pass.config.feedForwardLength
        let input = inputs.row(0), output = outputs.row(0)
        let a = pass.gate.row(0)
        let gate = w.gate?.weight, up = w.up.weight
        let count: Int
        switch mode {
        case .dense:
            preconditionFailure("dense runs without a sparse decoder")
        case .predictor:
            count = predictor!.activeNeurons(layer: layer, input: pass.x.row(0), into: ids, pool: predictorPool)
            if let device {
                runHybrid(device, w, layer: layer, input: input, output: output, count: count)
            } else {
                SparseFeedForward.run(pool: pool, gate: gate, up: up, down: downs[layer], activation: activation,
                                      input: input, active: ids, count: count, output: output, workspace: workspace,
                                      gateBias: w.gate?.bias?.pointer, upBias: w.up.bias?.pointer)
            }
        case .exact, .threshold:
            // Dense selection pass: the gate (ungated ReLU FFNs: the up projection), with its bias.
            pass.linear(inputs, [(gate ?? up, pass.gate)])
            pass.addBias(w.gate != nil ? w.gate!.bias : w.up.bias, to: pass.gate)
            VectorKernels.gatedActivation(activation, gate: a, up: nil, a, n)
            var selected = 0
            if mode == .exact {
                for i in 0..<n where a[i] != 0 { ids[selected] = Int32(i); selected += 1 }
            } else {
                for i in 0..<n where abs(a[i]) >= threshold { ids[selected] = Int32(i); selected += 1 }
            }
            count = selected
            if gate != nil {
                SparseFeedForward.gather(pool: pool, matrix: up, input: input, rows: ids, count: count,
                                         into: upValues, workspace: workspace, bias: w.up.bias?.pointer)
                let rectify = activation.rectifiesUp
                for k in 0..<count { coefficients[k] = a[Int(ids[k])] * (rectify ? max(upValues[k], 0) : upValues[k]) }
            } else {
                for k in 0..<count { coefficients[k] = a[Int(ids[k])] }
            }
            SparseFeedForward.runDown(pool: pool, down: downs[layer], rows: ids, coefficients: coefficients, count: count,
                                      output: output)
        case .down:
            pass.linear(inputs, [(gate!, pass.gate), (up, pass.up)])
            pass.addBias(w.gate!.bias, to: pass.gate)
            pass.addBias(w.up.bias, to: pass.up)
            VectorKernels.gatedActivation(activation, gate: a, up: pass.up.row(0), a, n)
            var selected = 0
            for i in 0..<n where abs(a[i]) >= threshold {
                ids[selected] = Int32(i)
                coefficients[selected] = a[i]
                selected += 1
            }
            count = selected
            SparseFeedForward.runDown(pool: pool, down: downs[layer], rows: ids, coefficients: coefficients, count: count,
                                      output: output)
        }
        if let bias = w.down.bias { VectorKernels.add(bias.pointer, into: output, bias.count) }
        return count
    }

    /// The active neurons `ids[0..<count]` split by where they live: the device computes its
    /// own while the CPU computes the rest, then the device's partial output is added. If the
    /// device fails, the CPU computes the whole layer from then on and the failure is kept.
    private func runHybrid(_ device: DeviceFeedForward, _ w: FeedForward, layer: Int, input: UnsafeMutablePointer<Float>,
                           output: UnsafeMutablePointer<Float>, count: Int) {
        var onDevice = 0, onCPU = 0
        for k in 0..<count {
            let row = device.deviceRow(layer: layer, neuron: ids[k])
            if row >= 0 {
                deviceRows[onDevice] = row
                onDevice += 1
            } else {
                cpuNeurons[onCPU] = ids[k]
                onCPU += 1
            }
        }
        let start = DispatchTime.now()
        do {
            try device.start(layer: layer, input: input, rows: deviceRows, count: onDevice)
            SparseFeedForward.run(pool: pool, gate: w.gate?.weight, up: w.up.weight, down: downs[layer], activation: activation,
                                  input: input, active: cpuNeurons, count: onCPU, output: output, workspace: workspace,
                                  gateBias: w.gate?.bias?.pointer, upBias: w.up.bias?.pointer)
            let cpuDone = DispatchTime.now()
            try device.finish(addingInto: output)
            hybridCounts.cpuSeconds += seconds(since: start) - seconds(since: cpuDone)
            hybridCounts.deviceWaitSeconds += seconds(since: cpuDone)
            hybridCounts.deviceNeurons += onDevice
            hybridCounts.cpuNeurons += onCPU
        } catch {
            hybridCounts.failure = "\(error)"
            self.device = nil
            SparseFeedForward.run(pool: pool, gate: w.gate?.weight, up: w.up.weight, down: downs[layer], activation: activation,
                                  input: input, active: ids, count: count, output: output, workspace: workspace,
                                  gateBias: w.gate?.bias?.pointer, upBias: w.up.bias?.pointer)
        }
    }
}

/// What the two sides of a hybrid run did over the decoded tokens counted.
public struct HybridCounts: Sendable, Equatable {
    /// Active neurons computed by the device and by the CPU.
    public var deviceNeurons = 0
    public var cpuNeurons = 0
    /// Time the CPU spent on its neurons (the device working meanwhile), and time then spent
    /// waiting for the device.
    public var cpuSeconds = 0.0
    public var deviceWaitSeconds = 0.0
    /// Why the device was dropped mid-run, if it was (the CPU then did everything).
    public var failure: String?

    public init(failure: String? = nil) { self.failure = failure }

    /// PowerInfer's measure: the device's share of the activated-neuron work.
    public var deviceShare: Double {
        deviceNeurons + cpuNeurons == 0 ? 0 : Double(deviceNeurons) / Double(deviceNeurons + cpuNeurons)
    }
}
