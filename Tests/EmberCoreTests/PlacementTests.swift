@testable import EmberCore
import Foundation
import XCTest

/// The placement solver against brute force, the placement of dense blocks and neurons, the
/// placement file, and finding a placement for a run.
final class PlacementTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-placement-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    // MARK: solver

    /// The best mass over every choice of group counts, by enumeration.
    func bruteForce(_ layers: [NeuronGroups], budget: Int, minimumGroups: Int) -> Double {
        var best = 0.0
        var counts = [Int](repeating: 0, count: layers.count)
        func visit(_ l: Int, bytes: Int, mass: Double) {
            if l == layers.count {
                if bytes <= budget { best = max(best, mass) }
                return
            }
            let layer = layers[l]
            let first = max(1, min(minimumGroups, layer.count))
            for k in [0] + Array(stride(from: first, through: layer.count, by: 1)) {
                counts[l] = k
                visit(l + 1, bytes: bytes + layer.bytes[..<k].reduce(0, +), mass: mass + layer.mass[..<k].reduce(0, +))
            }
        }
        visit(0, bytes: 0, mass: 0)
        return best
    }

    /// Checks that `assignment` is feasible and that its stated bytes and mass are its own.
    func assertFeasible(_ assignment: GroupAssignment, _ layers: [NeuronGroups], budget: Int, minimumGroups: Int,
                        _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(assignment.groups.count, layers.count, context, file: file, line: line)
        var bytes = 0, mass = 0.0
        for (layer, k) in zip(layers, assignment.groups) {
            XCTAssertTrue(k == 0 || (k <= layer.count && k >= min(max(minimumGroups, 1), layer.count)),
                          "\(context): \(k) groups of \(layer.count)", file: file, line: line)
            bytes += layer.bytes[..<min(k, layer.count)].reduce(0, +)
            mass += layer.mass[..<min(k, layer.count)].reduce(0, +)
        }
        XCTAssertLessThanOrEqual(bytes, budget, context, file: file, line: line)
        XCTAssertEqual(assignment.bytes, bytes, context, file: file, line: line)
        XCTAssertEqual(assignment.mass, mass, accuracy: 1e-9, context, file: file, line: line)
    }

    /// Random small instances: equal group sizes with partial last groups, and unequal sizes
    /// (layers storing neurons in different types), with and without a per-layer minimum.
    func randomInstance(_ random: inout SplitMix64) -> [NeuronGroups] {
        let layerCount = Int.random(in: 1...4, using: &random)
        let equalSizes = Bool.random(using: &random)
        return (0..<layerCount).map { _ in
            let groups = Int.random(in: 0...5, using: &random)
            let neuronBytes = equalSizes ? 6 : Int.random(in: 1...9, using: &random)
            var bytes = [Int](repeating: 4 * neuronBytes, count: groups)
            if groups > 0, Bool.random(using: &random) { bytes[groups - 1] = Int.random(in: 1...4, using: &random) * neuronBytes }
            // Hottest first, as the placement builds them, but not concave per byte in general.
            let mass = (0..<groups).map { _ in Double.random(in: 0...1, using: &random) }.sorted(by: >)
            return NeuronGroups(bytes: bytes, mass: mass)
        }
    }

    func testSolverMatchesBruteForceOnRandomInstances() {
        var random = SplitMix64(seed: 7)
        for trial in 0..<600 {
            let layers = randomInstance(&random)
            let total = layers.reduce(0) { $0 + $1.bytes.reduce(0, +) }
            let budget = Int.random(in: 0...(total + 5), using: &random)
            let minimumGroups = trial % 3 == 0 ? 0 : Int.random(in: 1...4, using: &random)
            let assignment = PlacementSolver.solve(layers, budget: budget, minimumGroups: minimumGroups)
            let context = "trial \(trial): budget \(budget), minimum \(minimumGroups), \(layers)"
            XCTAssertTrue(assignment.exact, context)
            assertFeasible(assignment, layers, budget: budget, minimumGroups: minimumGroups, context)
            XCTAssertEqual(assignment.mass, bruteForce(layers, budget: budget, minimumGroups: minimumGroups), accuracy: 1e-9, context)
        }
    }

    /// The minimum is what makes the problem non-convex: the greedy answer (the hottest group of
    /// each layer) is infeasible, and the solver must give a whole layer its minimum instead.
    func testMinimumGroupsChangesTheAnswer() {
        let layers = [NeuronGroups(bytes: [10, 10, 10], mass: [0.9, 0.1, 0.1]),
                      NeuronGroups(bytes: [10, 10, 10], mass: [0.8, 0.5, 0.5])]
        let free = PlacementSolver.solve(layers, budget: 20, minimumGroups: 0)
        XCTAssertEqual(free.groups, [1, 1])
        XCTAssertEqual(free.mass, 1.7, accuracy: 1e-12)
        let constrained = PlacementSolver.solve(layers, budget: 20, minimumGroups: 2)
        XCTAssertEqual(constrained.groups, [0, 2])
        XCTAssertEqual(constrained.mass, 1.3, accuracy: 1e-12)
        // A layer with fewer groups than the minimum is all or nothing.
        let small = PlacementSolver.solve([NeuronGroups(bytes: [5], mass: [1])], budget: 5, minimumGroups: 3)
        XCTAssertEqual(small.groups, [1])
    }

    func testSolverEdgeCases() {
        let layers = [NeuronGroups(bytes: [8, 8, 3], mass: [3, 2, 1]), NeuronGroups(bytes: [], mass: []),
                      NeuronGroups(bytes: [8], mass: [5])]
        let none = PlacementSolver.solve(layers, budget: 0, minimumGroups: 0)
        XCTAssertEqual(none.groups, [0, 0, 0])
        XCTAssertEqual(none.bytes, 0)
        let negative = PlacementSolver.solve(layers, budget: -5, minimumGroups: 1)
        XCTAssertEqual(negative.groups, [0, 0, 0])
        let all = PlacementSolver.solve(layers, budget: 1 << 40, minimumGroups: 2)
        XCTAssertEqual(all.groups, [3, 0, 1])
        XCTAssertEqual(all.bytes, 27)
        XCTAssertEqual(all.mass, 11)
        XCTAssertEqual(all.quantum, 0)  // no programme needed
        XCTAssertEqual(none.quantum, 1)  // gcd of 8, 8, 3 and 8
        XCTAssertEqual(PlacementSolver.solve([], budget: 100).groups, [])
        let justShort = PlacementSolver.solve(layers, budget: 26, minimumGroups: 0)
        XCTAssertEqual(justShort.groups, [2, 0, 1])
    }

    /// With too little room for an exact table the capacity is coarsened: still within budget,
    /// never better than the optimum, no worse than the optimum of a budget short by one unit per
    /// layer and one more (each layer's rounding loses less than a unit), and marked inexact.
    func testCoarsenedCapacityStaysWithinTheBudget() {
        var random = SplitMix64(seed: 11)
        var coarsened = 0
        for trial in 0..<300 {
            let layers = randomInstance(&random)
            let total = layers.reduce(0) { $0 + $1.bytes.reduce(0, +) }
            let budget = Int.random(in: 0...max(total - 1, 0), using: &random)
            let minimumGroups = trial % 2
            let assignment = PlacementSolver.solve(layers, budget: budget, minimumGroups: minimumGroups, maximumSteps: 30)
            let context = "trial \(trial): budget \(budget), quantum \(assignment.quantum), \(layers)"
            assertFeasible(assignment, layers, budget: budget, minimumGroups: minimumGroups, context)
            XCTAssertLessThanOrEqual(assignment.mass, bruteForce(layers, budget: budget, minimumGroups: minimumGroups) + 1e-9, context)
            let shortBudget = budget - (layers.count + 1) * assignment.quantum
            if shortBudget >= 0 {
                XCTAssertGreaterThanOrEqual(assignment.mass, bruteForce(layers, budget: shortBudget, minimumGroups: minimumGroups) - 1e-9, context)
            }
            if !assignment.exact { coarsened += 1 }
        }
        XCTAssertGreaterThan(coarsened, 50, "the limit should coarsen many of these instances")
    }

    /// One-neuron groups on a 7B shape (352 256 groups): too many for an exact table, solved
    /// coarsened in well under a second and close to the exact answer at granularity 32.
    func testFineGranularityIsCoarsenedNotSlow() throws {
        var random = SplitMix64(seed: 5)
        let layers = 32, f = 11008
        let frequencies = (0..<layers).map { _ in (0..<f).map { _ in pow(Double.random(in: 0..<1, using: &random), 8) } }
        let costs = PlacementCosts(denseBlocks: [], neuronBytes: Array(repeating: 8960, count: layers),
                                   feedForwardFileBytes: Array(repeating: 3 * f * 2304, count: layers), feedForwardLength: f)
        let fine = try Placement.solve(costs: costs, frequencies: frequencies, budget: 1 << 30, options: PlacementOptions(granularity: 1))
        let coarse = try Placement.solve(costs: costs, frequencies: frequencies, budget: 1 << 30, options: PlacementOptions(granularity: 32))
        XCTAssertFalse(fine.assignment.exact)
        XCTAssertTrue(coarse.assignment.exact)
        XCTAssertLessThanOrEqual(fine.placement.usedBytes, 1 << 30)
        XCTAssertLessThan(fine.solveSeconds, 3, "solve took \(fine.solveSeconds) s")
        XCTAssertGreaterThan(fine.placement.expectedDeviceShare, coarse.placement.expectedDeviceShare - 0.01)
        print(String(format: "granularity 1: %.0f ms, share %.4f; granularity 32: %.0f ms, share %.4f", fine.solveSeconds * 1000,
                     fine.placement.expectedDeviceShare, coarse.solveSeconds * 1000, coarse.placement.expectedDeviceShare))
    }

    // MARK: placing a model

    /// Three layers of five neurons, dense blocks of 100 bytes (output head 150), 10 bytes a neuron.
    func smallCosts() -> PlacementCosts {
        PlacementCosts(denseBlocks: (0..<3).map { .init(block: .attention(layer: $0), bytes: 100) } + [.init(block: .outputHead, bytes: 150)],
                       neuronBytes: [10, 10, 10], feedForwardFileBytes: [30, 30, 30], feedForwardLength: 5)
    }

    let smallFrequencies: [[Double]] = [[0.1, 0.9, 0.0, 0.5, 0.2], [0.3, 0.3, 0.8, 0.0, 0.1], [0.6, 0.0, 0.0, 0.7, 0.05]]

    func testDenseBlocksFirstThenHottestNeurons() throws {
        let costs = smallCosts()
        let options = PlacementOptions(granularity: 2)
        let total = smallFrequencies.joined().reduce(0, +)

        // Everything fits: all blocks, all neurons, the whole share.
        let all = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 10_000, options: options).placement
        XCTAssertEqual(all.denseBlocks, [.attention(layer: 0), .attention(layer: 1), .attention(layer: 2), .outputHead])
        XCTAssertEqual(all.deviceNeurons, Array(repeating: [0, 1, 2, 3, 4], count: 3))
        XCTAssertEqual(all.usedBytes, 450 + 150)
        XCTAssertEqual(all.expectedDeviceShare, 1, accuracy: 1e-12)

        // Nothing fits.
        let none = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 0, options: options).placement
        XCTAssertEqual(none.denseBlocks, [])
        XCTAssertEqual(none.deviceNeurons, [[], [], []])
        XCTAssertEqual(none.expectedDeviceShare, 0)

        // Less than one dense block, room for one pair: the hottest pair of the model (layer 0, ids 1 and 3).
        let small = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 25, options: options).placement
        XCTAssertEqual(small.denseBlocks, [])
        XCTAssertEqual(small.deviceNeurons, [[1, 3], [], []])
        XCTAssertEqual(small.neuronBytes, 20)
        XCTAssertEqual(small.expectedDeviceShare, 1.4 / total, accuracy: 1e-12)

        // 360 bytes: three attention blocks and three pairs would save 300 + 38 bytes read per
        // token; two blocks and the head save 350, so the objective takes those.
        let middleReport = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 360, options: options)
        let middle = middleReport.placement
        XCTAssertEqual(middle.denseBlocks, [.attention(layer: 0), .attention(layer: 1), .outputHead])
        XCTAssertEqual(middle.denseBytes, 350)
        XCTAssertEqual(middle.deviceNeurons, [[], [], []])
        // Bytes read per token: all 450 dense bytes, each neuron's 10 bytes at its frequency.
        XCTAssertEqual(middleReport.deviceReadShare, 350 / (450 + total * 10), accuracy: 1e-12)
        XCTAssertEqual(middleReport.cpuBytesPerToken, 100 + total * 10, accuracy: 1e-9)

        // Without the head, the attention blocks fit and 60 bytes remain: three pairs.
        var noHead = options
        noHead.placesOutputHead = false
        let attentionOnly = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 360, options: noHead).placement
        XCTAssertEqual(attentionOnly.denseBlocks, [.attention(layer: 0), .attention(layer: 1), .attention(layer: 2)])
        XCTAssertEqual(attentionOnly.deviceNeurons, [[1, 3], [0, 2], [0, 3]])  // layer 1: 0.8, then 0.3 (id 0 before id 1)
        XCTAssertEqual(attentionOnly.expectedDeviceShare, (1.4 + 1.1 + 1.3) / total, accuracy: 1e-12)

        // A KV cache makes attention hold more than it reads (400 bytes, 250 read): the hottest
        // pairs save more per byte, and the budget goes to them first.
        let cached = PlacementCosts(denseBlocks: (0..<3).map { .init(block: .attention(layer: $0), bytes: 400, readBytes: 250) },
                                    neuronBytes: [100, 100, 100], feedForwardFileBytes: [300, 300, 300], feedForwardLength: 5)
        let hot = try Placement.solve(costs: cached, frequencies: smallFrequencies, budget: 400, options: options).placement
        XCTAssertEqual(hot.denseBlocks, [])
        XCTAssertEqual(hot.neuronBytes, 400)  // two pairs of 200 bytes, value (1.4 + 1.3) × 100 = 270 > 250

        // Without dense blocks the whole budget holds neurons; the last group of a layer is partial.
        let ffnOnly = try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 150,
                                          options: PlacementOptions(granularity: 2, placesDenseBlocks: false)).placement
        XCTAssertEqual(ffnOnly.denseBlocks, [])
        XCTAssertEqual(ffnOnly.neuronBytes, 150)
        XCTAssertEqual(ffnOnly.deviceNeurons.map(\.count).reduce(0, +), 15)
    }

    /// The joint choice of dense blocks and neurons against every subset of blocks and every
    /// count of groups per layer, on small random instances whose attention blocks are alike (as a
    /// model's are): the same bytes saved per token.
    func testDenseAndNeuronChoiceMatchesBruteForce() throws {
        var random = SplitMix64(seed: 21)
        func uniform() -> Double { Double(random.next() >> 11) * 0x1p-53 }
        for _ in 0..<200 {
            let layers = 1 + Int(random.next() % 3), f = 1 + Int(random.next() % 4)
            // Attention blocks alike, as a model's are (each with its KV cache), the head apart.
            let read = 5 + Int(random.next() % 30), cache = Int(random.next() % 20)
            let dense: [PlacementCosts.DenseCost] = (0..<layers).map {
                .init(block: .attention(layer: $0), bytes: read + cache, readBytes: read + cache / 2)
            } + [.init(block: .outputHead, bytes: 10 + Int(random.next() % 30))]
            let neuronBytes = (0..<layers).map { _ in 1 + Int(random.next() % 8) }
            let costs = PlacementCosts(denseBlocks: dense, neuronBytes: neuronBytes,
                                       feedForwardFileBytes: neuronBytes.map { $0 * f }, feedForwardLength: f)
            let frequencies = (0..<layers).map { _ in (0..<f).map { _ in uniform() } }
            let budget = Int(random.next() % 120)
            let report = try Placement.solve(costs: costs, frequencies: frequencies, budget: budget,
                                             options: PlacementOptions(granularity: 1))
            // Brute force: every subset of dense blocks, every prefix of each layer's hottest neurons.
            let sorted = frequencies.map { $0.sorted(by: >) }
            var best = 0.0
            for subset in 0..<(1 << dense.count) {
                let chosen = dense.indices.filter { subset & (1 << $0) != 0 }
                var memory = chosen.reduce(0) { $0 + dense[$1].bytes }
                guard memory <= budget else { continue }
                var value = Double(chosen.reduce(0) { $0 + dense[$1].readBytes })
                func search(_ l: Int, _ memory: Int, _ value: Double) {
                    guard l < layers else { best = max(best, value); return }
                    for k in 0...f where memory + k * neuronBytes[l] <= budget {
                        search(l + 1, memory + k * neuronBytes[l], value + sorted[l].prefix(k).reduce(0, +) * Double(neuronBytes[l]))
                    }
                }
                search(0, memory, value)
                memory = 0; value = 0
            }
            let reads = Double(dense.reduce(0) { $0 + $1.readBytes })
                + zip(frequencies, neuronBytes).reduce(0.0) { $0 + $1.0.reduce(0, +) * Double($1.1) }
            XCTAssertEqual(reads - report.cpuBytesPerToken, best, accuracy: 1e-9)
            XCTAssertLessThanOrEqual(report.placement.usedBytes, budget)
        }
    }

    func testWholeLayerOffloadingTakesTheLastLayers() {
        let costs = smallCosts()
        let total = smallFrequencies.joined().reduce(0, +)
        let two = LayerOffloading(costs: costs, frequencies: smallFrequencies, budget: 270)
        XCTAssertEqual(two.layers, [1, 2])
        XCTAssertFalse(two.outputHead)
        XCTAssertEqual(two.bytes, 260)
        XCTAssertEqual(two.deviceShare, (1.5 + 1.35) / total, accuracy: 1e-12)
        XCTAssertEqual(two.deviceReadShare, 260.0 / 540, accuracy: 1e-12)
        let everything = LayerOffloading(costs: costs, frequencies: smallFrequencies, budget: 540)
        XCTAssertEqual(everything.layers, [0, 1, 2])
        XCTAssertTrue(everything.outputHead)
        XCTAssertEqual(everything.deviceShare, 1, accuracy: 1e-12)
        XCTAssertEqual(LayerOffloading(costs: costs, frequencies: smallFrequencies, budget: 129).layers, [])
    }

    func testInvalidOptionsAndShapesAreErrors() {
        let costs = smallCosts()
        XCTAssertThrowsError(try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: 10, options: PlacementOptions(granularity: 0)))
        XCTAssertThrowsError(try Placement.solve(costs: costs, frequencies: smallFrequencies, budget: -1, options: PlacementOptions()))
        XCTAssertThrowsError(try Placement.solve(costs: costs, frequencies: [[0.5]], budget: 10, options: PlacementOptions())) { error in
            guard case PlacementError.mismatch = error else { return XCTFail("\(error)") }
        }
        var damaged = smallFrequencies
        damaged[1][2] = .nan
        XCTAssertThrowsError(try Placement.solve(costs: costs, frequencies: damaged, budget: 10, options: PlacementOptions()))
        damaged[1][2] = -1
        XCTAssertThrowsError(try Placement.solve(costs: costs, frequencies: damaged, budget: 10, options: PlacementOptions()))
    }

    func testFrequenciesFromStatistics() throws {
        let layer = ActivationStatistics.Layer(gateThresholds: [0.1, 0.2], downThresholds: [0.1, 0.2],
                                               counts: [[4, 8, 0, 2], [1, .nan, -3, 10]])
        let statistics = ActivationStatistics(sourceModel: "m", corpusSHA256: "", tokens: 10, activation: "silu", gated: true,
                                              feedForwardLength: 4, sparsityTargets: [0.5, 0.7], layers: [layer, layer])
        XCTAssertThrowsError(try Placement.frequencies(statistics, sparsityTarget: nil)) { error in
            guard case PlacementError.sparsityTarget = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Placement.frequencies(statistics, sparsityTarget: 0.9))
        let low = try Placement.frequencies(statistics, sparsityTarget: 0.5)
        XCTAssertEqual(low.target, 0.5)
        XCTAssertEqual(low.values, [[0.4, 0.8, 0, 0.2], [0.4, 0.8, 0, 0.2]])
        let high = try Placement.frequencies(statistics, sparsityTarget: 0.7)
        XCTAssertEqual(high.values[1], [0.1, 0, 0, 1])  // damaged counts read as never firing
    }

    /// The costs come from the weights: gate and up rows plus the Q8_0 neuron-major down row per
    /// neuron, and together with the dense blocks they account for every byte read per token
    /// except the embedding row (plus the norms, which `bytesPerToken` leaves out).
    func testCostsOfSmolLM2() throws {
        let model = try TestData.model(.smolLM2)
        let config = model.config
        let costs = PlacementCosts(model: model)
        XCTAssertEqual(costs.layerCount, config.layerCount)
        XCTAssertEqual(costs.feedForwardLength, config.feedForwardLength)
        let d = config.embeddingLength
        for l in 0..<config.layerCount {
            let f = model.architecture.feedForward(l)
            XCTAssertEqual(costs.neuronBytes[l], f.gate!.weight.rowBytes + f.up.weight.rowBytes + d / 32 * 34)
        }
        // The layer norms run on the host; the final norm goes with the output head.
        let outputNorm = d * 4
        let dense = costs.denseBlocks.reduce(0) { $0 + $1.bytes }
        let fileBytes = costs.feedForwardFileBytes.reduce(0, +)
        XCTAssertEqual(dense + fileBytes, model.bytesPerToken - model.architecture.embedding.tokens.rowBytes + outputNorm)
        XCTAssertEqual(costs.denseBlocks.last?.block, .outputHead)
        let withCache = PlacementCosts(model: model, kvCacheTokens: 100)
        XCTAssertEqual(withCache.bytes(of: .attention(layer: 3)) - costs.bytes(of: .attention(layer: 3)), 100 * 2 * config.kvLength * 4)
    }

    /// A 7B shape (32 layers × 11008 neurons, Q4_0 gate and up, Q8_0 down: 8960 bytes a neuron)
    /// with power-law frequencies and a per-layer minimum: solved exactly, well within a second.
    func testSevenBillionShapeSolvesQuickly() throws {
        var random = SplitMix64(seed: 3)
        let layers = 32, f = 11008
        let frequencies = (0..<layers).map { _ in (0..<f).map { _ in pow(Double.random(in: 0..<1, using: &random), 8) } }
        let costs = PlacementCosts(denseBlocks: (0..<layers).map { .init(block: .attention(layer: $0), bytes: 37_748_736) }
                                       + [.init(block: .outputHead, bytes: 73_728_000)],
                                   neuronBytes: Array(repeating: 8960, count: layers),
                                   feedForwardFileBytes: Array(repeating: 3 * 11008 * 2304, count: layers), feedForwardLength: f)
        for budget in [1 << 30, 3 << 30] {
            let report = try Placement.solve(costs: costs, frequencies: frequencies, budget: budget,
                                             options: PlacementOptions(minimumGroups: 4))
            XCTAssertTrue(report.assignment.exact)
            XCTAssertLessThanOrEqual(report.placement.usedBytes, budget)
            XCTAssertGreaterThan(report.placement.usedBytes, budget - 286_720 * 8)  // nearly full
            XCTAssertLessThan(report.solveSeconds, 2, "solve took \(report.solveSeconds) s")
            XCTAssertTrue(report.assignment.groups.allSatisfy { $0 == 0 || $0 >= 4 })
            print(String(format: "7B shape, budget %@: solved in %.0f ms, device share %.3f",
                         ByteSize.format(budget), report.solveSeconds * 1000, report.placement.expectedDeviceShare))
        }
    }

    // MARK: file

    func samplePlacement() -> Placement {
        Placement(budget: 6 << 30, granularity: 32, minimumGroups: 2, modelName: "test model", statisticsSHA256: String(repeating: "ab", count: 32),
                  sparsityTarget: 0.7, feedForwardLength: 6, denseBlocks: [.attention(layer: 0), .outputHead],
                  deviceNeurons: [[0, 2, 5], [], [1]], denseBytes: 1234, neuronBytes: 567, expectedDeviceShare: 0.625)
    }

    func testPlacementFileRoundTrip() throws {
        let placement = samplePlacement()
        for pwri in [false, true] {
            let file = path("round-trip-\(pwri).gguf")
            try placement.write(to: file, powerInferMagic: pwri)
            XCTAssertEqual(try Placement(path: file), placement)
            let gguf = try GGUFFile(path: file)
            XCTAssertEqual(gguf.flavor, pwri ? .powerInfer : .gguf)
            XCTAssertEqual(try gguf.int("split.vram_capacity"), 6 << 30)
            XCTAssertEqual(gguf.tensorInfo("blk.0.gpu_idx")?.type, .i32)
            XCTAssertEqual(gguf.tensorInfo("blk.0.gpu_bucket")?.dims, [3])
            XCTAssertFalse(gguf.hasTensor("blk.1.gpu_bucket"))
        }
    }

    /// Writes a file with PowerInfer's keys only, plus `extra`, with the given per-layer tensors.
    func writeRaw(_ name: String, architecture: String = "generic.gpu_index", capacity: UInt64? = 1000,
                  tensors: [(String, TensorType, [Int32])], extra: [(String, GGUFValue)] = []) throws -> String {
        var writer = GGUFWriter()
        writer.set("general.architecture", .string(architecture))
        if let capacity { writer.set("split.vram_capacity", .uint64(capacity)) }
        for (key, value) in extra { writer.set(key, value) }
        for (tensor, type, values) in tensors {
            if type == .i32 {
                writer.addTensor(tensor, type: .i32, dims: [values.count], bytes: values.withUnsafeBytes { Array($0) })
            } else {
                writer.addTensor(tensor, dims: [values.count], floats: values.map(Float.init))
            }
        }
        let file = path(name)
        try writer.write(to: file)
        return file
    }

    func testPowerInferStylePlacementFileReads() throws {
        let file = try writeRaw("powerinfer.gguf", tensors: [("blk.0.gpu_idx", .i32, [1, 0, 1, 0]), ("blk.0.gpu_bucket", .i32, [0, 2]),
                                                             ("blk.1.gpu_idx", .i32, [0, 0, 0, 1]), ("blk.1.gpu_bucket", .i32, [3])])
        let placement = try Placement(path: file)
        XCTAssertEqual(placement.budget, 1000)
        XCTAssertEqual(placement.deviceNeurons, [[0, 2], [3]])
        XCTAssertEqual(placement.feedForwardLength, 4)
        XCTAssertEqual(placement.denseBlocks, [])
    }

    func testMalformedPlacementFilesAreTypedErrors() throws {
        func expectMalformed(_ file: String, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try Placement(path: file), line: line) { error in
                guard case PlacementError.malformed(_, let detail) = error else { return XCTFail("\(error)", line: line) }
                XCTAssertTrue(detail.contains(fragment), detail, line: line)
            }
        }
        let good = ("blk.0.gpu_idx", TensorType.i32, [Int32]([1, 0, 1]))
        XCTAssertThrowsError(try Placement(path: try writeRaw("stats.gguf", architecture: "ember.stats", tensors: [good]))) { error in
            XCTAssertEqual(error as? PlacementError, .notAPlacementFile(path: self.path("stats.gguf")))
        }
        XCTAssertThrowsError(try Placement(path: try writeRaw("no-capacity.gguf", capacity: nil, tensors: [good]))) { error in
            XCTAssertEqual(error as? GGUFError, .missingKey(path: self.path("no-capacity.gguf"), key: "split.vram_capacity"))
        }
        expectMalformed(try writeRaw("no-layers.gguf", tensors: []), "blk.0.gpu_idx")
        expectMalformed(try writeRaw("float.gguf", tensors: [("blk.0.gpu_idx", .f32, [1, 0, 1])]), "must be I32")
        expectMalformed(try writeRaw("two.gguf", tensors: [("blk.0.gpu_idx", .i32, [2, 0, 1])]), "other than 0 and 1")
        expectMalformed(try writeRaw("bucket.gguf", tensors: [good, ("blk.0.gpu_bucket", .i32, [2, 0])]), "gpu_bucket")
        expectMalformed(try writeRaw("lengths.gguf", tensors: [good, ("blk.1.gpu_idx", .i32, [1, 0])]), "must be I32 with 3")
        expectMalformed(try writeRaw("gap.gguf", tensors: [good, ("blk.2.gpu_idx", .i32, [1, 0, 0])]), "2 gpu_idx tensors for 1 layers")
        expectMalformed(try writeRaw("dense.gguf", tensors: [good], extra: [("ember.placement.dense_blocks", .array(.string, [.string("blk.x.attn")]))]),
                        "unknown dense block")
        expectMalformed(try writeRaw("layers.gguf", tensors: [good], extra: [("ember.placement.layer_count", .uint32(0))]), "layer_count")
        let missing = try writeRaw("missing.gguf", tensors: [good], extra: [("ember.placement.layer_count", .uint32(2))])
        XCTAssertThrowsError(try Placement(path: missing)) { error in
            XCTAssertEqual(error as? GGUFError, .missingTensor(path: missing, tensor: "blk.1.gpu_idx"))
        }
        // Bytes that are not GGUF at all: the reader's error, not a crash.
        let junk = path("junk.gguf")
        try Data("not a placement".utf8).write(to: URL(fileURLWithPath: junk))
        XCTAssertThrowsError(try Placement(path: junk))
    }

    func testDenseBlockNames() {
        for block in [PlacementCosts.DenseBlock.outputHead, .attention(layer: 0), .attention(layer: 31)] {
            XCTAssertEqual(PlacementCosts.DenseBlock(name: block.description), block)
        }
        for name in ["blk.-1.attn", "blk.01.attn", "blk.1.ffn", "blk..attn", "outputs", ""] {
            XCTAssertNil(PlacementCosts.DenseBlock(name: name), name)
        }
    }

    // MARK: finding a placement for a run

    /// Statistics for SmolLM2's shape with seeded random counts.
    func writeStatistics(_ name: String, seed: UInt64, model: LanguageModel) throws -> String {
        var random = SplitMix64(seed: seed)
        let config = model.config
        let layers = (0..<config.layerCount).map { _ in
            ActivationStatistics.Layer(gateThresholds: [0], downThresholds: [0],
                                       counts: [(0..<config.feedForwardLength).map { _ in Float(Int.random(in: 0...100, using: &random)) }])
        }
        let statistics = ActivationStatistics(sourceModel: "test", corpusSHA256: "", tokens: 100, activation: "relu", gated: true,
                                              feedForwardLength: config.feedForwardLength, sparsityTargets: [0.9], layers: layers)
        let file = path(name)
        try statistics.write(to: file)
        return file
    }

    func testLoadUsesAMatchingFileElseSolves() throws {
        let modelPath = try TestData.modelPath(.smolLM2)
        let model = try TestData.model(.smolLM2)
        let stats = try writeStatistics("stats.gguf", seed: 1, model: model)
        let placementPath = path("placement.gguf")
        let budget = 30 << 20

        let first = try Placement.load(model: model, modelPath: modelPath, budget: budget, statisticsPath: stats, placementPath: placementPath)
        XCTAssertEqual(first.source, .solved(statisticsPath: stats))
        XCTAssertEqual(first.placement.budget, budget)
        XCTAssertLessThanOrEqual(first.placement.usedBytes, budget)
        XCTAssertGreaterThan(first.placement.expectedDeviceShare, 0)
        try first.placement.write(to: placementPath)

        let again = try Placement.load(model: model, modelPath: modelPath, budget: budget, statisticsPath: stats, placementPath: placementPath)
        XCTAssertEqual(again.source, .file(path: placementPath))
        XCTAssertEqual(again.placement, first.placement)

        // Another budget, granularity or statistics file: solved anew.
        let other = try Placement.load(model: model, modelPath: modelPath, budget: budget / 2, statisticsPath: stats, placementPath: placementPath)
        XCTAssertEqual(other.source, .solved(statisticsPath: stats))
        XCTAssertLessThan(other.placement.usedBytes, first.placement.usedBytes)
        let coarse = try Placement.load(model: model, modelPath: modelPath, budget: budget, options: PlacementOptions(granularity: 64),
                                        statisticsPath: stats, placementPath: placementPath)
        XCTAssertEqual(coarse.source, .solved(statisticsPath: stats))
        let otherStats = try writeStatistics("other.gguf", seed: 2, model: model)
        let changed = try Placement.load(model: model, modelPath: modelPath, budget: budget, statisticsPath: otherStats, placementPath: placementPath)
        XCTAssertEqual(changed.source, .solved(statisticsPath: otherStats))
        XCTAssertNotEqual(changed.placement.deviceNeurons, first.placement.deviceNeurons)

        // No matching file and no statistics: a typed error naming the missing file.
        let absent = path("absent.stats.gguf")
        XCTAssertThrowsError(try Placement.load(model: model, modelPath: modelPath, budget: budget / 3, statisticsPath: absent,
                                                placementPath: placementPath)) { error in
            XCTAssertEqual(error as? PlacementError, .noStatistics(path: absent))
        }
    }

    // MARK: sizes

    func testByteSizes() {
        let valid: [(String, Int)] = [("6GiB", 6 << 30), ("512MiB", 512 << 20), ("1.5GB", 1_500_000_000), ("4096", 4096),
                                      ("100 KB", 100_000), ("2g", 2 << 30), ("0", 0), ("1.5KiB", 1536), ("7b", 7), ("0.5", 0)]
        for (text, bytes) in valid { XCTAssertEqual(ByteSize.parse(text), bytes, text) }
        for text in ["", "GiB", "-1GiB", "1e9", "1..5GB", "6 GiBs", "inf", "nan", "99999999999TiB", "0x10", "6GiB6", "1,5GB"] {
            XCTAssertNil(ByteSize.parse(text), text)
        }
        XCTAssertEqual(ByteSize.format(1536 << 20), "1.50 GiB")
        XCTAssertEqual(ByteSize.format(1000), "1000 B")
    }
}
