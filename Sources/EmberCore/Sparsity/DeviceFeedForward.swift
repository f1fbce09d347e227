import Foundation

/// The fast device's half of a hybrid sparse FFN (DESIGN.md section 6). For every layer it holds
/// the gate and up rows and the neuron-major down rows of the neurons the placement gave it (the
/// hot ones), and for a token computes the active ones among them while the CPU computes the
/// active cold ones; the two partial outputs are summed once.
///
/// The device mirrors the CPU's arithmetic: the input is quantized to the same activation
/// format, rows are integer dots on the same blocks, down is the same Q8_0 (or F16) neuron-major
/// copy. Only the order of float additions differs, so the sum equals the CPU-only result up to
/// float rounding.
///
/// One token at a time: `start` enqueues the whole layer's work without waiting (the host does
/// not come back between kernels), `finish` waits and adds the device's partial output.
public final class DeviceFeedForward: @unchecked Sendable {
    public let device: OpenCLDevice
    private let kernels: OpenCLMatrixKernels
    private let activationKernel: OpenCLKernel
    private let zeroKernel: OpenCLKernel
    private let activationCode: Int32

    private struct Layer {
        let gate: OpenCLWeightMatrix?
        let up: OpenCLWeightMatrix
        let down: OpenCLWeightMatrix
        /// Model neuron id → row on the device, or -1 for neurons the CPU keeps.
        let rowOfNeuron: [Int32]
    }
    private let layers: [Layer?]
    private let hiddenLength: Int

    // Per-token buffers, sized for the largest layer.
    private let input: OpenCLBuffer
    /// The input in each activation format the layers' matrices take (layers may differ).
    private let activations: [TensorType: OpenCLBuffer]
    private let rowIDs: OpenCLBuffer
    private let gateValues: OpenCLBuffer
    private let upValues: OpenCLBuffer
    private let coefficients: OpenCLBuffer
    private let output: OpenCLBuffer
    private let partial: UnsafeMutablePointer<Float>
    private var pending = false

    /// Neurons placed on the device, per layer.
    public let deviceNeuronCounts: [Int]

    /// Uploads, for each layer l, the rows of `deviceNeurons[l]` (model neuron ids) of the
    /// layer's gate and up matrices and of `downs[l]` (its neuron-major down projection).
    /// Everything is counted against the device's memory budget; a placement that does not fit
    /// throws before the run starts.
    public init(device: OpenCLDevice, weights: ModelWeights, activation: VectorKernels.Activation,
                downs: [NeuronMajorMatrix], deviceNeurons: [[Int32]]) throws {
        precondition(downs.count == weights.layers.count)
        guard deviceNeurons.count == weights.layers.count else {
            throw OpenCLError.invalidArgument("the placement has \(deviceNeurons.count) layers, the model \(weights.layers.count)")
        }
        self.device = device
        let kernels = try OpenCLMatrixKernels(device: device)
        self.kernels = kernels
        let program = try OpenCLProgram(source: Self.source, name: "hybrid feed-forward", device: device)
        activationKernel = try program.kernel("gated_activation")
        zeroKernel = try program.kernel("zero")
        switch activation {
        case .relu: activationCode = 0
        case .silu: activationCode = 1
        case .gelu: activationCode = 2
        }
        let d = weights.layers.first?.up.columns ?? 0
        hiddenLength = d
        var layers: [Layer?] = []
        var widest = 1
        for (l, w) in weights.layers.enumerated() {
            let neurons = deviceNeurons[l]
            guard !neurons.isEmpty else { layers.append(nil); continue }
            var rowOfNeuron = [Int32](repeating: -1, count: w.up.rows)
            for (row, neuron) in neurons.enumerated() {
                guard neuron >= 0, Int(neuron) < w.up.rows, rowOfNeuron[Int(neuron)] < 0 else {
                    throw OpenCLError.invalidArgument("layer \(l): placed neuron \(neuron) is out of range or repeated")
                }
                rowOfNeuron[Int(neuron)] = Int32(row)
            }
            layers.append(Layer(gate: try w.gate.map { try Self.upload(rows: neurons, of: $0, kernels: kernels) },
                                up: try Self.upload(rows: neurons, of: w.up, kernels: kernels),
                                down: try Self.upload(rows: neurons, of: downs[l].weights, kernels: kernels),
                                rowOfNeuron: rowOfNeuron))
            widest = max(widest, neurons.count)
        }
        self.layers = layers
        deviceNeuronCounts = deviceNeurons.map(\.count)
        input = try device.makeBuffer(byteCount: d * 4, label: "hybrid input")
        var activations: [TensorType: OpenCLBuffer] = [:]
        for layer in layers.compactMap({ $0 }) {
            for type in [layer.up.activationType] + (layer.gate.map { [$0.activationType] } ?? []) where activations[type] == nil {
                activations[type] = try kernels.makeActivations(type, length: d, label: "hybrid input as \(type)")
            }
        }
        self.activations = activations
        rowIDs = try device.makeBuffer(byteCount: widest * 4, label: "hybrid neuron ids")
        gateValues = try device.makeBuffer(byteCount: widest * 4, label: "hybrid gate values")
        upValues = try device.makeBuffer(byteCount: widest * 4, label: "hybrid up values")
        coefficients = try device.makeBuffer(byteCount: widest * 4, label: "hybrid coefficients")
        output = try device.makeBuffer(byteCount: d * 4, label: "hybrid output")
        partial = .allocate(capacity: max(d, 1))
    }

    deinit { partial.deallocate() }

    /// The device row of `neuron` in `layer`, or -1 when the CPU computes it.
    @inline(__always)
    public func deviceRow(layer: Int, neuron: Int32) -> Int32 {
        layers[layer]?.rowOfNeuron[Int(neuron)] ?? -1
    }

    /// Enqueues layer `layer`'s FFN over device rows `rows[0..<count]` for the normed input `x`
    /// (hidden floats) and sends it to the device without waiting.
    public func start(layer: Int, input x: UnsafePointer<Float>, rows: UnsafePointer<Int32>, count: Int) throws {
        guard count > 0, let w = layers[layer] else { pending = false; return }
        let d = hiddenLength
        try device.write(UnsafeRawBufferPointer(start: x, count: d * 4), to: input)
        try device.write(UnsafeRawBufferPointer(start: rows, count: count * 4), to: rowIDs)
        let upInput = try converted(to: w.up.activationType)
        try kernels.multiply(w.up, gathering: rowIDs, count: count, activations: upInput, into: upValues)
        if let gate = w.gate {
            let gateInput = gate.activationType == w.up.activationType ? upInput : try converted(to: gate.activationType)
            try kernels.multiply(gate, gathering: rowIDs, count: count, activations: gateInput, into: gateValues)
        }
        try activationKernel.setArguments([.buffer(w.gate == nil ? upValues : gateValues), .buffer(upValues),
                                           .buffer(coefficients), .int32(Int32(count)), .int32(activationCode),
                                           .int32(w.gate == nil ? 0 : 1)])
        try device.enqueue(activationKernel, globalSize: count, localSize: Self.localSize)
        try zeroKernel.setArguments([.buffer(output), .int32(Int32(d))])
        try device.enqueue(zeroKernel, globalSize: d, localSize: Self.localSize)
        try kernels.accumulate(w.down, rows: rowIDs, coefficients: coefficients, count: count, into: output)
        try device.flush()
        pending = true
    }

    /// Enqueues the conversion of `input` to activation format `type`; returns its buffer.
    private func converted(to type: TensorType) throws -> OpenCLBuffer {
        let buffer = activations[type]!
        if type == .f32 {
            // Float activations: the kernels read the input as it is.
            return input
        }
        try kernels.quantize(input, length: hiddenLength, to: type, into: buffer)
        return buffer
    }

    /// Waits for the work `start` enqueued and adds its partial output into `y` (hidden floats).
    public func finish(addingInto y: UnsafeMutablePointer<Float>) throws {
        guard pending else { return }
        pending = false
        try device.read(output, into: UnsafeMutableRawBufferPointer(start: partial, count: hiddenLength * 4))
        VectorKernels.add(partial, into: y, hiddenLength)
    }

    /// Copies `rows` of `matrix` (whole quant-block rows) into one contiguous device matrix.
    private static func upload(rows: [Int32], of matrix: WeightMatrix, kernels: OpenCLMatrixKernels) throws -> OpenCLWeightMatrix {
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: rows.count * matrix.rowBytes, alignment: 64)
        defer { bytes.deallocate() }
        for (k, row) in rows.enumerated() {
            (bytes + k * matrix.rowBytes).copyMemory(from: matrix.data + Int(row) * matrix.rowBytes, byteCount: matrix.rowBytes)
        }
        return try kernels.upload(WeightMatrix(name: matrix.name + ".device_rows", type: matrix.type, rows: rows.count,
                                               columns: matrix.columns, data: UnsafeRawPointer(bytes)))
    }

    static let localSize = 64

    /// The activation between the gathered rows and the down projection, and a fill.
    /// Activations as the CPU computes them (vector.c): ReLU, SiLU, and GELU's tanh form.
    static let source = """
    __kernel void gated_activation(__global const float *gate, __global const float *up, __global float *out,
                                   int count, int kind, int gated) {
        int k = get_global_id(0);
        if (k >= count) return;
        float g = gate[k];
        float a;
        if (kind == 0) {
            a = fmax(g, 0.0f);
        } else if (kind == 1) {
            a = g / (1.0f + exp(-g));
        } else {
            a = 0.5f * g * (1.0f + tanh(0.7978845608f * (g + 0.044715f * g * g * g)));
        }
        out[k] = gated ? a * up[k] : a;
    }

    __kernel void zero(__global float *y, int n) {
        int i = get_global_id(0);
        if (i < n) y[i] = 0.0f;
    }
    """
}
