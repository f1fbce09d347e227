import Dispatch
import Foundation

/// What the fast device holds under a memory budget (DESIGN.md section 6): whole dense blocks,
/// then per layer the FFN neurons that fire most, in groups of `granularity` neurons.
///
/// File (`ember place`): GGUF in PowerInfer's placement layout, so its tools read it, plus
/// Ember's keys. `general.architecture = generic.gpu_index`; `split.vram_capacity` (u64, the
/// budget); per layer N, in layer order, `blk.N.gpu_idx` (I32 [F], 1 = on the device) and
/// `blk.N.gpu_bucket` (I32, the device neuron ids ascending; left out for a layer with none, as
/// GGUF has no empty tensors). Ember's keys `ember.placement.*` add the granularity, the
/// per-layer minimum, the model name, the statistics file's SHA-256 and sparsity target, the
/// dense blocks on the device and the bytes and expected share. A file without them (made by
/// PowerInfer, `MODEL.generated.gpuidx`) reads too: its budget is `split.vram_capacity`, it
/// lists no dense blocks, and a run uses it as PowerInfer does, whenever that capacity fits
/// the run's budget.
public struct Placement: Sendable, Equatable {
    /// Bytes of device memory the placement was solved for.
    public var budget: Int
    /// Neurons per group (the last group of a layer may be partial).
    public var granularity: Int
    /// A layer holds either no group or at least this many.
    public var minimumGroups: Int
    public var modelName: String
    /// SHA-256 of the activation statistics file the frequencies came from (hex).
    public var statisticsSHA256: String
    /// The statistics' sparsity target whose counts were used.
    public var sparsityTarget: Float
    public var feedForwardLength: Int
    /// Dense blocks on the device, in the order they were taken.
    public var denseBlocks: [PlacementCosts.DenseBlock]
    /// Per layer, the ids of the neurons on the device, ascending.
    public var deviceNeurons: [[Int32]]
    /// Bytes used by the dense blocks and by the FFN neurons.
    public var denseBytes: Int
    public var neuronBytes: Int
    /// Bytes kept for the device's working buffers (part of the budget, before any block).
    public var reservedBytes: Int
    /// Positions of KV cache counted with each attention block on the device.
    public var kvCacheTokens: Int
    /// Expected share of activated-neuron work the device serves: the placed neurons' summed
    /// firing frequencies over those of all neurons.
    public var expectedDeviceShare: Double
    /// Read from a file without Ember's keys: PowerInfer's own placement.
    public var fromPowerInfer = false

    public init(budget: Int, granularity: Int, minimumGroups: Int, modelName: String, statisticsSHA256: String,
                sparsityTarget: Float, feedForwardLength: Int, denseBlocks: [PlacementCosts.DenseBlock],
                deviceNeurons: [[Int32]], denseBytes: Int, neuronBytes: Int, expectedDeviceShare: Double,
                reservedBytes: Int = 0, kvCacheTokens: Int = 0) {
        self.reservedBytes = reservedBytes
        self.kvCacheTokens = kvCacheTokens
        self.budget = budget
        self.granularity = granularity
        self.minimumGroups = minimumGroups
        self.modelName = modelName
        self.statisticsSHA256 = statisticsSHA256
        self.sparsityTarget = sparsityTarget
        self.feedForwardLength = feedForwardLength
        self.denseBlocks = denseBlocks
        self.deviceNeurons = deviceNeurons
        self.denseBytes = denseBytes
        self.neuronBytes = neuronBytes
        self.expectedDeviceShare = expectedDeviceShare
    }

    public var layerCount: Int { deviceNeurons.count }
    public var usedBytes: Int { reservedBytes + denseBytes + neuronBytes }

    static let architecture = "generic.gpu_index"
}

/// The choices `Placement.solve` leaves open.
public struct PlacementOptions: Sendable, Equatable {
    /// Neurons per group: the device takes a layer's neurons in whole groups, so splits never
    /// get so fine that synchronising the two devices costs more than they save.
    public var granularity = 32
    /// A layer with device neurons has at least this many groups (0: no minimum).
    public var minimumGroups = 0
    /// The statistics' sparsity target whose counts to use; nil: its only one.
    public var sparsityTarget: Float?
    /// Reserve each placed attention block's KV cache for this many positions (0: weights only).
    public var kvCacheTokens = 0
    /// False: the whole budget goes to FFN neurons (the dense blocks stay on the host), which
    /// isolates the neuron placement, e.g. to compare with PowerInfer's FFN-only figures.
    public var placesDenseBlocks = true
    /// Bytes of the budget kept for the device's working buffers, placed before anything else.
    public var reservedBytes = 0
    /// False: the output head stays on the host even when it would fit (a device that does
    /// not run it).
    public var placesOutputHead = true

    public init(granularity: Int = 32, minimumGroups: Int = 0, sparsityTarget: Float? = nil, kvCacheTokens: Int = 0,
                placesDenseBlocks: Bool = true, reservedBytes: Int = 0, placesOutputHead: Bool = true) {
        self.placesOutputHead = placesOutputHead
        self.reservedBytes = reservedBytes
        self.granularity = granularity
        self.minimumGroups = minimumGroups
        self.sparsityTarget = sparsityTarget
        self.kvCacheTokens = kvCacheTokens
        self.placesDenseBlocks = placesDenseBlocks
    }
}

/// What llama.cpp's layer offloading would put on the device under the same budget: as many whole
/// layers (attention and the file's full FFN) as fit, counted from the last layer down as
/// llama.cpp assigns them, and the output head once every layer is there.
public struct LayerOffloading: Sendable, Equatable {
    public var layers: [Int]
    public var outputHead: Bool
    public var bytes: Int
    /// Share of activated-neuron work in the offloaded layers.
    public var deviceShare: Double
    /// Share of the weight bytes read per token that the device reads: llama.cpp computes the
    /// FFN densely, so every byte of every layer is read, the offloaded ones on the device.
    public var deviceReadShare: Double

    public init(costs: PlacementCosts, frequencies: [[Double]], budget: Int) {
        var remaining = max(budget, 0)
        var layers: [Int] = []
        var read = 0
        for l in (0..<costs.layerCount).reversed() {
            let bytes = costs.bytes(of: .attention(layer: l)) + costs.feedForwardFileBytes[l]
            guard bytes <= remaining else { break }
            remaining -= bytes
            read += costs.readBytes(of: .attention(layer: l)) + costs.feedForwardFileBytes[l]
            layers.append(l)
        }
        let head = costs.bytes(of: .outputHead)
        outputHead = layers.count == costs.layerCount && head <= remaining
        if outputHead {
            remaining -= head
            read += costs.readBytes(of: .outputHead)
        }
        self.layers = layers.reversed()
        bytes = max(budget, 0) - remaining
        let total = frequencies.joined().reduce(0, +)
        let placed = layers.reduce(0.0) { $0 + ($1 < frequencies.count ? frequencies[$1].reduce(0, +) : 0) }
        deviceShare = total > 0 ? placed / total : 0
        let all = costs.denseBlocks.reduce(0) { $0 + $1.readBytes } + costs.feedForwardFileBytes.reduce(0, +)
        deviceReadShare = all > 0 ? Double(read) / Double(all) : 0
    }
}

/// A solved placement with the figures `ember place` reports.
public struct PlacementReport: Sendable {
    public var placement: Placement
    /// Share of the weight bytes read per token that the device reads, when both devices compute
    /// only the active neurons (each neuron's bytes read at its firing frequency) and the dense
    /// blocks whole: the speed the placement buys, where `expectedDeviceShare` counts FFN work only.
    public var deviceReadShare: Double
    /// Bytes the CPU still reads per token under this placement, in the same model: what the
    /// placement maximises the device's part of (`Placement.solve`).
    public var cpuBytesPerToken: Double
    public var assignment: GroupAssignment
    public var solveSeconds: Double
    public var layerOffloading: LayerOffloading
}

public enum PlacementError: Error, CustomStringConvertible, Equatable, LocalizedError {
    case notAPlacementFile(path: String)
    case malformed(path: String, detail: String)
    case invalidOptions(String)
    /// The statistics have no such sparsity target, or several and none was chosen.
    case sparsityTarget(String)
    case mismatch(String)
    case noStatistics(path: String)
    /// A placement file (PowerInfer's) is for another model: `tensor` does not fit it.
    case wrongModel(path: String, tensor: String, detail: String)
    /// PowerInfer's placement needs more device memory than the run's budget, and there are no
    /// statistics to solve another.
    case overBudget(path: String, capacity: Int, budget: Int, statisticsPath: String)

    public var description: String {
        switch self {
        case .notAPlacementFile(let path):
            return "\(path) is not a placement file (general.architecture must be \(Placement.architecture))"
        case .malformed(let path, let detail): return "\(path): \(detail)"
        case .invalidOptions(let detail), .sparsityTarget(let detail): return detail
        case .mismatch(let detail): return detail
        case .noStatistics(let path):
            return "no placement matches the budget and there are no activation statistics at \(path) to solve one (run `ember profile`)"
        case .wrongModel(let path, let tensor, let detail):
            return "\(path): tensor \(SafeText.quoted(tensor)) does not fit the model: \(detail)"
        case .overBudget(let path, let capacity, let budget, let statisticsPath):
            return "\(path) was made for \(ByteSize.format(capacity)) of device memory, more than the budget of \(ByteSize.format(budget)), "
                + "and there are no activation statistics at \(statisticsPath) to solve another (run `ember profile`)"
        }
    }

    public var errorDescription: String? { description }
}

// MARK: solving

extension Placement {
    /// Per layer, each neuron's firing frequency (count ÷ tokens) at the options' target.
    public static func frequencies(_ statistics: ActivationStatistics, sparsityTarget: Float?) throws -> (target: Float, values: [[Double]]) {
        let index: Int
        if let wanted = sparsityTarget {
            guard let found = statistics.targetIndex(for: wanted) else {
                throw PlacementError.sparsityTarget("the statistics have no sparsity target \(wanted); they have \(statistics.sparsityTargets)")
            }
            index = found
        } else {
            guard statistics.sparsityTargets.count == 1 else {
                throw PlacementError.sparsityTarget("the statistics have targets \(statistics.sparsityTargets): choose one")
            }
            index = 0
        }
        let tokens = Double(max(statistics.tokens, 1))
        // A damaged count (negative, NaN) counts as never firing rather than derailing the order.
        let values = statistics.layers.map { layer in layer.counts[index].map { $0.isFinite ? max(Double($0), 0) / tokens : 0 } }
        return (statistics.sparsityTargets[index], values)
    }

    /// Solves the placement of a model (`costs`) with per-layer neuron `frequencies` under `budget`.
    public static func solve(costs: PlacementCosts, frequencies: [[Double]], budget: Int, options: PlacementOptions,
                             modelName: String = "", statisticsSHA256: String = "", sparsityTarget: Float = 0) throws -> PlacementReport {
        guard options.granularity >= 1 else { throw PlacementError.invalidOptions("the granularity must be at least 1 neuron") }
        guard options.minimumGroups >= 0 else { throw PlacementError.invalidOptions("the minimum group count cannot be negative") }
        guard budget >= 0 else { throw PlacementError.invalidOptions("the budget cannot be negative") }
        let f = costs.feedForwardLength
        guard frequencies.count == costs.layerCount, frequencies.allSatisfy({ $0.count == f }) else {
            throw PlacementError.mismatch("the statistics describe \(frequencies.count) layers of \(frequencies.first?.count ?? 0) neurons, "
                                          + "the model \(costs.layerCount) of \(f)")
        }
        guard frequencies.allSatisfy({ $0.allSatisfy { $0.isFinite && $0 >= 0 } }) else {
            throw PlacementError.invalidOptions("firing frequencies must be finite and non-negative")
        }
        let start = DispatchTime.now()

        guard options.reservedBytes >= 0 else { throw PlacementError.invalidOptions("the reserved bytes cannot be negative") }
        let placeable = max(0, budget - options.reservedBytes)

        // Hottest first; equal frequencies keep the lower id first, so the order is reproducible.
        let orders: [[Int]] = frequencies.map { layer in
            layer.indices.sorted { layer[$0] != layer[$1] ? layer[$0] > layer[$1] : $0 < $1 }
        }
        // A group's value is what it saves the CPU per token: its neurons' bytes, each read at
        // its firing frequency.
        let g = options.granularity
        let groups: [NeuronGroups] = orders.enumerated().map { l, order in
            let starts = Array(stride(from: 0, to: order.count, by: g))
            return NeuronGroups(
                bytes: starts.map { min(g, order.count - $0) * costs.neuronBytes[l] },
                mass: starts.map { s in order[s..<min(s + g, order.count)].reduce(0.0) { $0 + frequencies[l][$1] } * Double(costs.neuronBytes[l]) })
        }
        let curve = PlacementSolver.curve(groups, budget: placeable, minimumGroups: options.minimumGroups)

        // The objective is the time per token the device saves: the bytes the CPU no longer
        // reads. A dense block saves all of its reads; with a KV cache for a long context its
        // memory grows faster than its reads, and hot neurons may save more per byte. So every
        // split of the budget is weighed: the attention blocks that save the most per byte held
        // (equal in most models: layer order then), with and without the output head, and the
        // best neurons in what is left (from one programme, `curve`).
        let attention = costs.denseBlocks.filter { $0.block != .outputHead }.enumerated().sorted { a, b in
            let left = Double(a.element.readBytes) * Double(b.element.bytes), right = Double(b.element.readBytes) * Double(a.element.bytes)
            return left != right ? left > right : a.offset < b.offset
        }.map(\.element)
        let heads = costs.denseBlocks.filter { $0.block == .outputHead && options.placesOutputHead }
        var chosen = (value: -1.0, attention: 0, head: false)
        for withHead in options.placesDenseBlocks && !heads.isEmpty ? [true, false] : [false] {
            var memory = withHead ? heads[0].bytes : 0, read = withHead ? heads[0].readBytes : 0
            for m in 0...(options.placesDenseBlocks ? attention.count : 0) {
                if m > 0 {
                    memory += attention[m - 1].bytes
                    read += attention[m - 1].readBytes
                }
                guard memory <= placeable else { break }
                let value = Double(read) + curve.mass(within: placeable - memory)
                // Ties go to more dense blocks: their savings are certain, a neuron's are expected.
                if value >= chosen.value { chosen = (value, m, withHead) }
            }
        }
        let denseCosts = Array(attention.prefix(chosen.attention)) + (chosen.head ? heads : [])
        let denseBytes = denseCosts.reduce(0) { $0 + $1.bytes }
        // Listed in the model's order: attention by layer, then the head.
        let dense = costs.denseBlocks.map(\.block).filter { block in denseCosts.contains { $0.block == block } }
        let assignment = curve.assignment(within: placeable - denseBytes)
        let neurons: [[Int32]] = orders.enumerated().map { l, order in
            order.prefix(min(assignment.groups[l] * g, order.count)).map { Int32($0) }.sorted()
        }
        let elapsed = seconds(since: start)

        let total = frequencies.joined().reduce(0, +)
        var neuronReads = 0.0, deviceNeuronReads = 0.0, deviceMass = 0.0
        for l in frequencies.indices {
            neuronReads += frequencies[l].reduce(0, +) * Double(costs.neuronBytes[l])
            let placed = neurons[l].reduce(0.0) { $0 + frequencies[l][Int($1)] }
            deviceMass += placed
            deviceNeuronReads += placed * Double(costs.neuronBytes[l])
        }
        let reads = Double(costs.denseBlocks.reduce(0) { $0 + $1.readBytes }) + neuronReads
        let deviceReads = Double(denseCosts.reduce(0) { $0 + $1.readBytes }) + deviceNeuronReads
        let placement = Placement(
            budget: budget, granularity: g, minimumGroups: options.minimumGroups, modelName: modelName,
            statisticsSHA256: statisticsSHA256, sparsityTarget: sparsityTarget, feedForwardLength: f,
            denseBlocks: dense, deviceNeurons: neurons, denseBytes: denseBytes, neuronBytes: assignment.bytes,
            expectedDeviceShare: total > 0 ? deviceMass / total : 0, reservedBytes: budget - placeable,
            kvCacheTokens: options.kvCacheTokens)
        return PlacementReport(placement: placement,
                               deviceReadShare: reads > 0 ? deviceReads / reads : 0, cpuBytesPerToken: reads - deviceReads,
                               assignment: assignment, solveSeconds: elapsed,
                               layerOffloading: LayerOffloading(costs: costs, frequencies: frequencies, budget: budget))
    }

    /// Solves the placement of `model` from the statistics file at `statisticsPath`.
    static func solve(model: LanguageModel, modelPath: String, statisticsPath: String, budget: Int,
                             options: PlacementOptions = PlacementOptions()) throws -> PlacementReport {
        let statistics = try ActivationStatistics(path: statisticsPath)
        let config = model.config
        guard statistics.layers.count == config.layerCount, statistics.feedForwardLength == config.feedForwardLength else {
            throw PlacementError.mismatch("\(statisticsPath) describes \(statistics.layers.count) layers of \(statistics.feedForwardLength) "
                                          + "neurons, \(modelPath) has \(config.layerCount) of \(config.feedForwardLength)")
        }
        let (target, frequencies) = try frequencies(statistics, sparsityTarget: options.sparsityTarget)
        return try solve(costs: PlacementCosts(model: model, kvCacheTokens: options.kvCacheTokens),
                         frequencies: frequencies, budget: budget, options: options,
                         modelName: modelName(model, path: modelPath), statisticsSHA256: try fileSHA256(statisticsPath),
                         sparsityTarget: target)
    }

    /// The model's own name (`general.name`), else its file name.
    static func modelName(_ model: LanguageModel, path: String) -> String {
        ((try? model.file.string("general.name")) ?? nil) ?? URL(fileURLWithPath: path).lastPathComponent
    }

    /// SHA-256 of a file's bytes, in hex.
    public static func fileSHA256(_ path: String) throws -> String {
        let mapped = try MappedFile(path: path)
        return withExtendedLifetime(mapped) { SHA256.hex(mapped.bytes) }
    }
}

// MARK: finding the placement for a run

extension Placement {
    /// Where `load` found its placement.
    public enum Source: Sendable, Equatable {
        case file(path: String)
        case solved(statisticsPath: String)
    }

    /// The placement a run of `model` uses under `budget`: the placement file (default: beside the
    /// model, MODEL.placement.gguf, else PowerInfer's MODEL.gguf.generated.gpuidx) when it was
    /// solved for this budget, options and model, and for these statistics when the statistics
    /// file exists (PowerInfer's: when its capacity fits the budget); otherwise one solved now
    /// from the statistics (default: MODEL.stats.gguf beside the model). A malformed placement
    /// file, or one of PowerInfer's for another model, is an error, not skipped.
    static func load(model: LanguageModel, modelPath: String, budget: Int,
                     options: PlacementOptions = PlacementOptions(),
                     statisticsPath: String? = nil, placementPath: String? = nil) throws -> (placement: Placement, source: Source) {
        let files = FileManager.default
        let placementPath = placementPath
            ?? [CompanionFile.placement.path(besideModel: modelPath), CompanionFile.powerInferPlacement(besideModel: modelPath)]
                .first { files.fileExists(atPath: $0) }
            ?? CompanionFile.placement.path(besideModel: modelPath)
        let statisticsPath = statisticsPath ?? CompanionFile.statistics.path(besideModel: modelPath)
        let haveStatistics = files.fileExists(atPath: statisticsPath)
        var tooLarge: Placement?
        if files.fileExists(atPath: placementPath) {
            let stored = try Placement(path: placementPath)
            let config = model.config
            if stored.fromPowerInfer {
                try stored.check(fits: config, path: placementPath)
                if stored.budget <= budget { return (stored, .file(path: placementPath)) }
                tooLarge = stored
            }
            var matches = !stored.fromPowerInfer && stored.budget == budget && stored.granularity == options.granularity
                && stored.minimumGroups == options.minimumGroups && stored.layerCount == config.layerCount
                && stored.feedForwardLength == config.feedForwardLength
                && stored.reservedBytes == min(budget, options.reservedBytes)
                && (stored.denseBlocks.isEmpty || stored.kvCacheTokens == options.kvCacheTokens) && stored.modelName == modelName(model, path: modelPath)
            if let target = options.sparsityTarget { matches = matches && abs(stored.sparsityTarget - target) <= 0.005 }
            if !options.placesDenseBlocks { matches = matches && stored.denseBlocks.isEmpty }
            if !options.placesOutputHead { matches = matches && !stored.denseBlocks.contains(.outputHead) }
            if matches, haveStatistics { matches = stored.statisticsSHA256 == (try fileSHA256(statisticsPath)) }
            if matches { return (stored, .file(path: placementPath)) }
        }
        guard haveStatistics else {
            if let tooLarge {
                throw PlacementError.overBudget(path: placementPath, capacity: tooLarge.budget, budget: budget, statisticsPath: statisticsPath)
            }
            throw PlacementError.noStatistics(path: statisticsPath)
        }
        let report = try solve(model: model, modelPath: modelPath, statisticsPath: statisticsPath, budget: budget, options: options)
        return (report.placement, .solved(statisticsPath: statisticsPath))
    }
}

// MARK: file

extension Placement {
    /// Checks that the placement has one `blk.N.gpu_idx` of the model's FFN width per layer of
    /// `config`; the error names the file and the first tensor that does not fit.
    func check(fits config: ModelConfig, path: String) throws {
        guard feedForwardLength == config.feedForwardLength else {
            throw PlacementError.wrongModel(path: path, tensor: "blk.0.gpu_idx",
                                            detail: "it marks \(feedForwardLength) neurons, the model's layers have \(config.feedForwardLength)")
        }
        guard layerCount == config.layerCount else {
            let tensor = layerCount > config.layerCount ? "blk.\(config.layerCount).gpu_idx" : "blk.\(layerCount).gpu_idx"
            throw PlacementError.wrongModel(path: path, tensor: tensor,
                                            detail: "the file places \(layerCount) layers, the model has \(config.layerCount)")
        }
    }

    /// Writes the placement file atomically; `powerInferMagic` makes its first bytes `PWRI` as
    /// PowerInfer's own placement files have them.
    public func write(to path: String, powerInferMagic: Bool = false) throws {
        var writer = GGUFWriter()
        if powerInferMagic { writer.magic = Array("PWRI".utf8) }
        writer.set("general.architecture", .string(Self.architecture))
        writer.set("split.vram_capacity", .uint64(UInt64(budget)))
        writer.set("ember.placement.budget", .uint64(UInt64(budget)))
        writer.set("ember.placement.granularity", .uint32(UInt32(granularity)))
        writer.set("ember.placement.minimum_groups", .uint32(UInt32(minimumGroups)))
        writer.set("ember.placement.model_name", .string(modelName))
        writer.set("ember.placement.stats_sha256", .string(statisticsSHA256))
        writer.set("ember.placement.sparsity_target", .float32(sparsityTarget))
        writer.set("ember.placement.feed_forward_length", .uint32(UInt32(feedForwardLength)))
        writer.set("ember.placement.layer_count", .uint32(UInt32(layerCount)))
        writer.set("ember.placement.dense_blocks", .array(.string, denseBlocks.map { .string($0.description) }))
        writer.set("ember.placement.dense_bytes", .uint64(UInt64(denseBytes)))
        writer.set("ember.placement.neuron_bytes", .uint64(UInt64(neuronBytes)))
        writer.set("ember.placement.reserved_bytes", .uint64(UInt64(reservedBytes)))
        writer.set("ember.placement.kv_cache_tokens", .uint64(UInt64(kvCacheTokens)))
        writer.set("ember.placement.expected_device_share", .float64(expectedDeviceShare))
        for (l, ids) in deviceNeurons.enumerated() {
            var onDevice = [Int32](repeating: 0, count: feedForwardLength)
            for id in ids { onDevice[Int(id)] = 1 }
            writer.addTensor("blk.\(l).gpu_idx", type: .i32, dims: [feedForwardLength], fill: Self.filler(onDevice))
            if !ids.isEmpty {
                writer.addTensor("blk.\(l).gpu_bucket", type: .i32, dims: [ids.count], fill: Self.filler(ids))
            }
        }
        try writer.write(to: path)
    }

    private static func filler(_ values: [Int32]) -> (UnsafeMutableRawBufferPointer) throws -> Void {
        { buffer in values.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(buffer.count))) } }
    }

    public init(path: String) throws {
        try self.init(file: try GGUFFile(path: path))
    }

    init(file: GGUFFile) throws {
        let path = file.path
        guard try file.string("general.architecture") == Self.architecture else { throw PlacementError.notAPlacementFile(path: path) }
        func malformed(_ detail: String) -> PlacementError { .malformed(path: path, detail: detail) }
        func nonNegative(_ key: String, _ value: Int?) throws -> Int? {
            guard let value else { return nil }
            guard value >= 0 else { throw malformed("\(key) is negative (\(value))") }
            return value
        }
        guard let capacity = try nonNegative("split.vram_capacity", try file.int("split.vram_capacity")) else {
            throw GGUFError.missingKey(path: path, key: "split.vram_capacity")
        }
        budget = try nonNegative("ember.placement.budget", try file.int("ember.placement.budget")) ?? capacity
        granularity = try nonNegative("ember.placement.granularity", try file.int("ember.placement.granularity")) ?? 1
        minimumGroups = try nonNegative("ember.placement.minimum_groups", try file.int("ember.placement.minimum_groups")) ?? 0
        modelName = try file.string("ember.placement.model_name") ?? ""
        statisticsSHA256 = try file.string("ember.placement.stats_sha256") ?? ""
        sparsityTarget = Float(try file.float("ember.placement.sparsity_target") ?? 0)
        guard (0...1).contains(sparsityTarget) else { throw malformed("ember.placement.sparsity_target is \(sparsityTarget), expected 0 to 1") }
        denseBytes = try nonNegative("ember.placement.dense_bytes", try file.int("ember.placement.dense_bytes")) ?? 0
        neuronBytes = try nonNegative("ember.placement.neuron_bytes", try file.int("ember.placement.neuron_bytes")) ?? 0
        reservedBytes = try nonNegative("ember.placement.reserved_bytes", try file.int("ember.placement.reserved_bytes")) ?? 0
        kvCacheTokens = try nonNegative("ember.placement.kv_cache_tokens", try file.int("ember.placement.kv_cache_tokens")) ?? 0
        expectedDeviceShare = try file.float("ember.placement.expected_device_share") ?? 0
        // A share of summed frequencies: finite and non-negative (rounding may take it a hair past 1).
        guard expectedDeviceShare.isFinite, expectedDeviceShare >= 0 else {
            throw malformed("ember.placement.expected_device_share is \(expectedDeviceShare), expected a share from 0 to 1")
        }
        guard granularity >= 1 else { throw malformed("ember.placement.granularity is 0") }
        fromPowerInfer = try file.int("ember.placement.budget") == nil
        denseBlocks = try (file.stringArray("ember.placement.dense_blocks") ?? []).map { name in
            guard let block = PlacementCosts.DenseBlock(name: name) else { throw malformed("unknown dense block \(SafeText.quoted(name))") }
            return block
        }

        // Layers: as the key says, else as many as there are consecutive blk.N.gpu_idx tensors.
        var layerCount = 0
        let layerLimit = ReaderLimits.layers
        if let stated = try file.int("ember.placement.layer_count") {
            guard layerLimit.range.contains(stated) else {
                throw malformed("ember.placement.layer_count is \(stated), outside the limit on \(layerLimit.name) "
                                + "(\(layerLimit.range.lowerBound)...\(layerLimit.range.upperBound))")
            }
            layerCount = stated
        } else {
            while file.hasTensor("blk.\(layerCount).gpu_idx") { layerCount += 1 }
            try layerLimit.check(max(layerCount, 1), what: "number of blk.N.gpu_idx tensors", file: path)
        }
        guard layerCount > 0 else { throw malformed("no blk.0.gpu_idx tensor") }
        guard let first = file.tensorInfo("blk.0.gpu_idx") else { throw GGUFError.missingTensor(path: path, tensor: "blk.0.gpu_idx") }
        let f = try ReaderLimits.feedForwardLength.check(first.elementCount, what: "element count of tensor", subject: first.name, file: path)
        if let stated = try file.int("ember.placement.feed_forward_length"), stated != f {
            throw malformed("ember.placement.feed_forward_length is \(stated), but blk.0.gpu_idx has \(f) entries")
        }
        feedForwardLength = f
        func integers(_ name: String, count: Int?) throws -> [Int32]? {
            guard let info = file.tensorInfo(name) else { return nil }
            guard info.type == .i32, info.dims.count == 1, count == nil || info.elementCount == count else {
                throw malformed("tensor \(name) must be I32 with \(count.map(String.init) ?? "one row of") elements, "
                                + "found \(info.type) \(info.dims)")
            }
            let data = file.data(of: info)
            return (0..<info.elementCount).map { data.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self) }
        }
        deviceNeurons = try (0..<layerCount).map { l in
            guard let flags = try integers("blk.\(l).gpu_idx", count: f) else {
                throw GGUFError.missingTensor(path: path, tensor: "blk.\(l).gpu_idx")
            }
            guard flags.allSatisfy({ $0 == 0 || $0 == 1 }) else { throw malformed("blk.\(l).gpu_idx holds values other than 0 and 1") }
            let ids = flags.indices.filter { flags[$0] == 1 }.map { Int32($0) }
            if let bucket = try integers("blk.\(l).gpu_bucket", count: nil), bucket != ids {
                throw malformed("blk.\(l).gpu_bucket does not list, ascending, the neurons blk.\(l).gpu_idx marks")
            }
            return ids
        }
        let declared = file.tensors.filter { $0.name.hasSuffix(".gpu_idx") }.count
        guard declared == layerCount else {
            throw malformed("\(declared) gpu_idx tensors for \(layerCount) layers")
        }
    }
}
