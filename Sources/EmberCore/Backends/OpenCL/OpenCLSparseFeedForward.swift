/// The device's share of a sparse FFN (DESIGN.md sections 5 and 6): for the active neurons it
/// holds, gather their gate and up rows, apply the activation, and add their down columns into
/// an output, all enqueued back to back with no host round trip. The same computation as the
/// CPU's SparseFeedForward.run, so the device's partial output and the CPU's sum to the whole.
final class OpenCLSparseFeedForward {
    let gate: OpenCLWeightMatrix?
    let up: OpenCLWeightMatrix
    /// Neuron-major: row i is neuron i's output column (Q8_0 or F16).
    let down: OpenCLWeightMatrix
    let activation: VectorKernels.Activation
    /// The most active neurons one call takes (the scratch is sized for it).
    let capacity: Int

    private let matrices: OpenCLMatrixKernels
    private let vectors: OpenCLVectorKernels
    private let upInput: OpenCLBuffer?
    private let gateInput: OpenCLBuffer?
    private let gateValues: OpenCLBuffer
    private let upValues: OpenCLBuffer
    /// Per row, the gate and up biases (nil: none).
    private let gateBias: OpenCLBuffer?
    private let upBias: OpenCLBuffer?

    /// Uploads the three matrices (gate nil: an ungated FFN), the gate and up biases of their
    /// rows if any, and scratch for `capacity` neurons.
    init(matrices: OpenCLMatrixKernels, vectors: OpenCLVectorKernels, gate: WeightMatrix?, up: WeightMatrix,
                down: NeuronMajorMatrix, activation: VectorKernels.Activation, capacity: Int,
                gateBias: [Float]? = nil, upBias: [Float]? = nil) throws {
        let d = down.columns
        guard up.columns == d, down.rows == up.rows, gate.map({ $0.columns == d && $0.rows == up.rows }) ?? true else {
            throw OpenCLError.invalidArgument("\(up.name): gate, up and down shapes disagree")
        }
        guard gateBias.map({ $0.count == up.rows && gate != nil }) ?? true, upBias.map({ $0.count == up.rows }) ?? true else {
            throw OpenCLError.invalidArgument("\(up.name): a bias of another length than the \(up.rows) rows")
        }
        guard capacity > 0 else { throw OpenCLError.invalidArgument("\(up.name): sparse FFN capacity must be positive") }
        guard vectors.device === matrices.device else {
            throw OpenCLError.invalidArgument("\(up.name): matrix and vector kernels belong to different devices")
        }
        let device = matrices.device
        self.matrices = matrices
        self.vectors = vectors
        self.activation = activation
        self.capacity = capacity
        self.up = try matrices.upload(up)
        self.gate = try gate.map { try matrices.upload($0) }
        self.down = try matrices.upload(down)
        upInput = self.up.activationType == .f32 ? nil
            : try matrices.makeActivations(self.up.activationType, length: d, label: "\(up.name) input")
        if let g = self.gate, g.activationType != .f32, g.activationType != self.up.activationType {
            gateInput = try matrices.makeActivations(g.activationType, length: d, label: "\(g.name) input")
        } else {
            gateInput = nil
        }
        gateValues = try device.makeBuffer(byteCount: capacity * 4, label: "\(up.name) gate values")
        upValues = try device.makeBuffer(byteCount: capacity * 4, label: "\(up.name) up values")
        self.gateBias = try gateBias.map { try device.makeBuffer(copying: $0, label: "\(up.name) gate bias") }
        self.upBias = try upBias.map { try device.makeBuffer(copying: $0, label: "\(up.name) up bias") }
    }

    /// output[0..<hidden) += the FFN of `input` (hidden floats, already normed) over the `count`
    /// neurons in `active` (Int32 ids on the device, no repeats).
    func run(input: OpenCLBuffer, active: OpenCLBuffer, count: Int, output: OpenCLBuffer) throws {
        guard count <= capacity else {
            throw OpenCLError.invalidArgument("\(up.name): \(count) active neurons exceed the capacity of \(capacity)")
        }
        guard count > 0 else { return }
        let d = down.columns
        let upActivations = try matrices.activations(for: up, from: input, length: d, scratch: upInput)
        try matrices.multiply(up, gathering: active, count: count, activations: upActivations, into: upValues)
        if let upBias { try vectors.addGathered(bias: upBias, biasCount: up.rows, rows: active, count: count, into: upValues) }
        if let gate {
            let gateActivations = gate.activationType == up.activationType ? upActivations
                : try matrices.activations(for: gate, from: input, length: d, scratch: gateInput)
            try matrices.multiply(gate, gathering: active, count: count, activations: gateActivations, into: gateValues)
            if let gateBias {
                try vectors.addGathered(bias: gateBias, biasCount: gate.rows, rows: active, count: count, into: gateValues)
            }
            try vectors.gatedActivation(activation, gate: gateValues, up: upValues, count: count, into: gateValues)
        } else {
            try vectors.gatedActivation(activation, gate: upValues, up: nil, count: count, into: gateValues)
        }
        try matrices.accumulate(down, rows: active, coefficients: gateValues, count: count, into: output)
    }
}
