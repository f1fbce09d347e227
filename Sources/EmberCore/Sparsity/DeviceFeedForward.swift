import Foundation

/// The fast device's half of a hybrid sparse FFN (DESIGN.md section 6). For every layer it holds
/// the gate and up rows and the neuron-major down rows of the neurons the placement gave it (the
/// hot ones), and for a token computes the active ones among them while the CPU computes the
/// active cold ones; the two partial outputs are summed once.
///
/// The device mirrors the CPU's arithmetic (OpenCLSparseFeedForward): the input is quantized to
/// the same activation format, rows are integer dots on the same blocks, down is the same Q8_0
/// (or F16) neuron-major copy. Only the order of float additions differs.
///
/// One token at a time: `start` enqueues the layer's work without waiting (no host round trip
/// between kernels), `finish` waits and adds the device's partial output.
final class DeviceFeedForward {
    private let device: OpenCLDevice

    private struct Layer {
        let feedForward: OpenCLSparseFeedForward
        /// Model neuron id → row on the device, or -1 for neurons the CPU keeps.
        let rowOfNeuron: [Int32]
    }
    private let layers: [Layer?]
    private let hiddenLength: Int

    // Per-token buffers, sized for the largest layer.
    private let input: OpenCLBuffer
    private let rowIDs: OpenCLBuffer
    private let output: OpenCLBuffer
    private let zeros: [Float]
    private let partial: UnsafeMutablePointer<Float>
    private var pending = false

    /// Uploads, for each layer l, the rows of `deviceNeurons[l]` (model neuron ids) of the
    /// layer's gate and up matrices and of `downs[l]` (its neuron-major down projection).
    /// Everything is counted against the device's memory budget; a placement that does not fit
    /// throws before the run starts.
    init(device: OpenCLDevice, feedForwards: [FeedForward], activation: VectorKernels.Activation,
         downs: [NeuronMajorMatrix], deviceNeurons: [[Int32]]) throws {
        precondition(downs.count == feedForwards.count)
        guard deviceNeurons.count == feedForwards.count else {
            throw OpenCLError.invalidArgument("the placement has \(deviceNeurons.count) layers, the model \(feedForwards.count)")
        }
        self.device = device
        let matrices = try OpenCLMatrixKernels(device: device)
        let vectors = try OpenCLVectorKernels(device: device)
        let d = downs.first?.columns ?? 0
        hiddenLength = d
        var layers: [Layer?] = []
        var widest = 1
        for (l, f) in feedForwards.enumerated() {
            let gateWeights = f.gate?.weight, upWeights = f.up.weight
            let neurons = deviceNeurons[l]
            guard !neurons.isEmpty else { layers.append(nil); continue }
            var rowOfNeuron = [Int32](repeating: -1, count: upWeights.rows)
            for (row, neuron) in neurons.enumerated() {
                guard neuron >= 0, Int(neuron) < upWeights.rows, rowOfNeuron[Int(neuron)] < 0 else {
                    throw OpenCLError.invalidArgument("layer \(l): placed neuron \(neuron) is out of range or repeated")
                }
                rowOfNeuron[Int(neuron)] = Int32(row)
            }
            let gate = gateWeights.map { RowSelection(neurons, of: $0) }, up = RowSelection(neurons, of: upWeights)
            // The biases of the placed neurons, in device-row order (down's stays with the CPU, added once).
            func selected(_ bias: FloatVector?) -> [Float]? { bias.map { b in neurons.map { b.pointer[Int($0)] } } }
            let feedForward = try withExtendedLifetime((gate, up)) {
                try OpenCLSparseFeedForward(matrices: matrices, vectors: vectors, gate: gate?.matrix, up: up.matrix,
                                            down: NeuronMajorMatrix(selecting: neurons, of: downs[l]),
                                            activation: activation, capacity: neurons.count,
                                            gateBias: selected(f.gate?.bias), upBias: selected(f.up.bias))
            }
            layers.append(Layer(feedForward: feedForward, rowOfNeuron: rowOfNeuron))
            widest = max(widest, neurons.count)
        }
        self.layers = layers
        input = try device.makeBuffer(byteCount: d * 4, label: "hybrid input")
        rowIDs = try device.makeBuffer(byteCount: widest * 4, label: "hybrid neuron rows")
        output = try device.makeBuffer(byteCount: d * 4, label: "hybrid output")
        zeros = [Float](repeating: 0, count: d)
        partial = .allocate(capacity: max(d, 1))
    }

    deinit { partial.deallocate() }

    /// At most how many bytes of device memory a model's working buffers take beside the
    /// weights (every neuron placed, scratch as floats): what a placement must leave free.
    static func workingBytes(_ config: ModelConfig) -> Int {
        let d = config.embeddingLength, f = config.feedForwardLength
        // Per layer: gate and up values per neuron, the input in up to two activation formats;
        // then the input, the neuron rows and the output.
        return config.layerCount * (8 * f + 8 * d) + 8 * d + 4 * f
    }

    /// The device row of `neuron` in `layer`, or -1 when the CPU computes it.
    @inline(__always)
    func deviceRow(layer: Int, neuron: Int32) -> Int32 {
        layers[layer]?.rowOfNeuron[Int(neuron)] ?? -1
    }

    /// Enqueues layer `layer`'s FFN over device rows `rows[0..<count]` for the normed input `x`
    /// (hidden floats) and sends it to the device without waiting.
    func start(layer: Int, input x: UnsafePointer<Float>, rows: UnsafePointer<Int32>, count: Int) throws {
        guard count > 0, let w = layers[layer] else { pending = false; return }
        try device.write(UnsafeRawBufferPointer(start: x, count: hiddenLength * 4), to: input)
        try device.write(UnsafeRawBufferPointer(start: rows, count: count * 4), to: rowIDs)
        try device.write(zeros, to: output)
        try w.feedForward.run(input: input, active: rowIDs, count: count, output: output)
        try device.flush()
        pending = true
    }

    /// Waits for the work `start` enqueued and adds its partial output into `y` (hidden floats).
    func finish(addingInto y: UnsafeMutablePointer<Float>) throws {
        guard pending else { return }
        pending = false
        try device.read(output, into: UnsafeMutableRawBufferPointer(start: partial, count: hiddenLength * 4))
        VectorKernels.add(partial, into: y, hiddenLength)
    }
}

/// Some rows of a weight matrix copied into a matrix of their own (for upload).
private final class RowSelection {
    let matrix: WeightMatrix
    private let storage: UnsafeMutableRawPointer

    init(_ rows: [Int32], of source: WeightMatrix) {
        storage = .allocate(byteCount: max(64, rows.count * source.rowBytes), alignment: 64)
        source.copyRows(rows, to: storage)
        matrix = WeightMatrix(name: source.name + ".selected", type: source.type, rows: rows.count, columns: source.columns,
                              data: UnsafeRawPointer(storage))
    }

    deinit { storage.deallocate() }
}
