import EmberCore
import Foundation

/// `ember place`: what the fast device holds under a memory budget (dense blocks, then the
/// hottest FFN neurons), solved from activation statistics and written as a placement file.
enum PlaceCommand {
    static let flags: [Arguments.Flag] = [CommonFlags.model] + [
        .init(names: ["--stats"], takesValue: true, help: "activation statistics from `ember profile` (default: MODEL.stats.gguf beside the model)"),
        .init(names: ["--vram-budget"], takesValue: true, help: "device memory to fill, e.g. 6GiB, 512MiB, 1.5GB or bytes (required)"),
        .init(names: ["--granularity"], takesValue: true, help: "neurons per group the device takes (default 32)"),
        .init(names: ["--min-groups"], takesValue: true, help: "a layer gets no group or at least this many (default 0: no minimum)"),
        .init(names: ["--sparsity"], takesValue: true, help: "which sparsity target of the statistics to use (default: its only one)"),
        .init(names: ["--kv-tokens"], takesValue: true, help: "also reserve each placed attention block's KV cache for N positions (default 0)"),
        .init(names: ["--ffn-only"], takesValue: false, help: "give the whole budget to FFN neurons (dense blocks stay on the host)"),
        .init(names: ["--no-head"], takesValue: false,
              help: "keep the output head on the host (hybrid runs place attention with --kv-tokens = their --ctx)"),
        .init(names: ["--output", "-o"], takesValue: true, help: "placement file to write (default: report only)"),
        .init(names: ["--pwri"], takesValue: false, help: "write the file with PowerInfer's PWRI magic instead of GGUF"),
        .init(names: ["--json"], takesValue: false, help: "print one JSON object instead of the report"),
    ]

    static let summary = "place dense blocks and hot FFN neurons on the fast device under a memory budget"

    static func main(_ arguments: Arguments) async throws {
        guard let budget = try arguments.vramBudget() else { throw UsageError("give the device memory with --vram-budget SIZE") }
        var options = PlacementOptions()
        options.granularity = try arguments.int("--granularity", default: 32, range: 1...1 << 20)
        options.minimumGroups = try arguments.int("--min-groups", default: 0, range: 0...1 << 20)
        options.kvCacheTokens = try arguments.int("--kv-tokens", default: 0, range: 0...1 << 24)
        options.placesDenseBlocks = !arguments.has("--ffn-only")
        if arguments.has("--sparsity") { options.sparsityTarget = try arguments.float("--sparsity", default: 0, range: 0...1) }
        if let statsFlag = arguments.string("--stats"), !FileManager.default.fileExists(atPath: statsFlag) {
            throw UsageError("no statistics file at \(statsFlag) (--stats)")
        }

        let model = try SessionFlags.model(arguments)
        let statsPath = arguments.string("--stats") ?? CompanionFile.statistics.path(besideModel: model.path)
        guard FileManager.default.fileExists(atPath: statsPath) else {
            throw UsageError("give the activation statistics with --stats FILE (none at \(statsPath))")
        }
        options.placesOutputHead = !arguments.has("--no-head")
        let output = arguments.string("--output")
        if let output { try AtomicFileWriter.prepare(output) }
        let report: PlacementReport
        do {
            report = try model.place(statisticsPath: statsPath, budget: budget, options: options)
        } catch PlacementError.sparsityTarget(let detail) {
            throw UsageError("\(statsPath): \(detail) (--sparsity)")
        }
        if let output { try report.placement.write(to: output, powerInferMagic: arguments.has("--pwri")) }
        if arguments.has("--json") {
            try printJSON(report, model: model.path, stats: statsPath, output: output)
        } else {
            try printReport(report, model: model.path, stats: statsPath, output: output)
        }
    }

    static func printReport(_ report: PlacementReport, model: String, stats: String, output: String?) throws {
        let p = report.placement, a = report.assignment, o = report.layerOffloading
        let neurons = p.deviceNeurons.reduce(0) { $0 + $1.count }, all = p.layerCount * p.feedForwardLength
        let attention = p.denseBlocks.filter { $0 != .outputHead }.count
        try Terminal.print("placement of \(p.modelName) (\((model as NSString).lastPathComponent)) with \((stats as NSString).lastPathComponent)"
              + String(format: " (sparsity target %.2f), granularity %d, minimum groups %d", p.sparsityTarget, p.granularity, p.minimumGroups))
        try Terminal.print("budget: \(ByteSize.format(p.budget)) (\(p.budget) bytes); used \(ByteSize.format(p.usedBytes)): "
              + "working buffers \(ByteSize.format(p.reservedBytes)) + dense \(ByteSize.format(p.denseBytes)) + FFN \(ByteSize.format(p.neuronBytes))")
        try Terminal.print("dense blocks on the device: attention of \(attention) of \(p.layerCount) layers, output head "
              + (p.denseBlocks.contains(.outputHead) ? "yes" : "no"))
        try Terminal.print(String(format: "FFN neurons on the device: %d of %d (%.1f %%); per layer: ", neurons, all, Double(neurons) / Double(max(all, 1)) * 100)
              + p.deviceNeurons.map { String($0.count) }.joined(separator: " "))
        let method = a.quantum == 0 ? "everything fits"
            : "dynamic programme over \(p.layerCount) layers × \(a.capacityUnits) units of \(a.quantum) bytes"
        try Terminal.print(String(format: "solved in %.1f ms (%@, %@)", report.solveSeconds * 1000, a.exact ? "exact" : "capacity rounded, not exact", method))
        try Terminal.print(String(format: "expected device share of activated-neuron work: %.1f %% (of weight bytes read per token: %.1f %%); "
                                    + "the CPU still reads %.1f MB per token",
                     p.expectedDeviceShare * 100, report.deviceReadShare * 100, report.cpuBytesPerToken / 1e6))
        let range = o.layers.isEmpty ? "none" : "\(o.layers.count) layers (\(o.layers.first!)–\(o.layers.last!))"
        try Terminal.print(String(format: "offloading whole layers instead: %@, output head %@, %@: %.1f %% (of weight bytes read per token, dense: %.1f %%)",
                     range, o.outputHead ? "yes" : "no", ByteSize.format(o.bytes), o.deviceShare * 100, o.deviceReadShare * 100))
        if let output { try Terminal.print("wrote \(output)") }
    }

    static func printJSON(_ report: PlacementReport, model: String, stats: String, output: String?) throws {
        let p = report.placement, a = report.assignment, o = report.layerOffloading
        var object: [String: Any] = [
            "model": model, "model_name": p.modelName, "stats": stats, "stats_sha256": p.statisticsSHA256,
            "budget_bytes": p.budget, "granularity": p.granularity, "minimum_groups": p.minimumGroups,
            "sparsity_target": Double(p.sparsityTarget),
            "dense_bytes": p.denseBytes, "ffn_bytes": p.neuronBytes, "reserved_bytes": p.reservedBytes, "used_bytes": p.usedBytes,
            "dense_blocks": p.denseBlocks.map(\.description),
            "device_neurons_per_layer": p.deviceNeurons.map(\.count),
            "solve_seconds": report.solveSeconds, "exact": a.exact, "capacity_units": a.capacityUnits, "quantum_bytes": a.quantum,
            "expected_device_share": p.expectedDeviceShare, "device_read_share": report.deviceReadShare,
            "cpu_bytes_per_token": report.cpuBytesPerToken,
            "layer_offloading": ["layers": o.layers, "output_head": o.outputHead, "bytes": o.bytes, "device_share": o.deviceShare,
                                 "device_read_share": o.deviceReadShare] as [String: Any],
        ]
        if let output { object["output"] = output }
        if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
            try Terminal.print(String(decoding: data, as: UTF8.self))
        }
    }
}
