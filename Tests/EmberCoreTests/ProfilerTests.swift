@testable import EmberCore
import Foundation
import FoundationXML
import XCTest

final class ProfilerTests: XCTestCase {
    static let targets: [Float] = [0.3, 0.5, 0.7, 0.9]
    static let context = 256

    /// Two chunks of 256 tokens of the GPL text on SmolLM2, profiled once for all tests.
    struct Profiled {
        let session: Context
        let tokens: [Int32]
        let statistics: ActivationStatistics
    }

    nonisolated(unsafe) private static var profiled: Profiled?
    private static let lock = NSLock()

    static func smolProfile() throws -> Profiled {
        lock.lock()
        defer { lock.unlock() }
        if let profiled { return profiled }
        let model = try TestData.model(.smolLM2)
        let tokenizer = try Tokenizer(file: model.file)
        let text = try String(contentsOf: corpus(), encoding: .utf8)
        let tokens = Array(tokenizer.encode(String(text.prefix(4000)), addSpecial: false, parseSpecial: false).prefix(2 * context))
        XCTAssertEqual(tokens.count, 2 * context)
        let session = Context(model: model, threads: 2, contextLength: context)
        let statistics = try session.profileActivations(tokens, context: context, targets: targets).statistics
        let result = Profiled(session: session, tokens: tokens, statistics: statistics)
        profiled = result
        return result
    }

    /// The fixtures' evaluation text, carried with the tests.
    static func corpus() throws -> URL {
        TestData.fixtures.appendingPathComponent("eval-gpl3.txt")
    }

    func testThresholdsRiseWithTheTarget() throws {
        let stats = try Self.smolProfile().statistics
        XCTAssertEqual(stats.tokens, 2 * Self.context)
        XCTAssertEqual(stats.activation, "silu")
        XCTAssertTrue(stats.gated)
        XCTAssertEqual(stats.sparsityTargets, Self.targets)
        XCTAssertEqual(stats.layers.count, 30)
        for (l, layer) in stats.layers.enumerated() {
            for t in 1..<Self.targets.count {
                XCTAssertGreaterThan(layer.gateThresholds[t], layer.gateThresholds[t - 1], "layer \(l)")
                XCTAssertGreaterThan(layer.downThresholds[t], layer.downThresholds[t - 1], "layer \(l)")
            }
            XCTAssertGreaterThan(layer.gateThresholds[0], 0)
        }
    }

    /// Running the same tokens again and counting exactly at the chosen thresholds gives the
    /// targets, per layer, for both the gate and the down thresholds.
    func testThresholdsReachTheTargetsOnTheSameTokens() throws {
        let p = try Self.smolProfile()
        let measured = try p.session.measureSparsity(p.tokens, context: Self.context, statistics: p.statistics)
        for l in 0..<p.statistics.layers.count {
            for (t, target) in Self.targets.enumerated() {
                // Refined to the exact quantile: one value in 786 432 is 1.3e-6.
                XCTAssertEqual(measured.gate[l][t], Double(target), accuracy: 1e-5, "gate, layer \(l), target \(target)")
                XCTAssertEqual(measured.down[l][t], Double(target), accuracy: 0.005, "down, layer \(l), target \(target)")
                XCTAssertEqual(measured.counts[l][t], p.statistics.layers[l].counts[t])
            }
        }
    }

    func testCountsSumToTheActiveShare() throws {
        let stats = try Self.smolProfile().statistics
        let all = Double(stats.tokens) * Double(stats.feedForwardLength)
        for (l, layer) in stats.layers.enumerated() {
            for (t, target) in Self.targets.enumerated() {
                let sum = layer.counts[t].reduce(0.0) { $0 + Double($1) }
                // The counts are exact at thresholds that are exact quantiles.
                XCTAssertEqual(sum, (1 - Double(target)) * all, accuracy: 1e-5 * all, "layer \(l), target \(target)")
                XCTAssertTrue(layer.counts[t].allSatisfy { $0 >= 0 && $0 <= Float(stats.tokens) + 1e-3 })
            }
        }
    }

    func testStatisticsRoundTripThroughTheFile() throws {
        var stats = try Self.smolProfile().statistics
        stats.sourceModel = "SmolLM2-135M"
        stats.corpusSHA256 = SHA256.hex(Array("corpus".utf8))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ember-stats-\(UUID()).gguf").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try stats.write(to: path)
        XCTAssertEqual(try ActivationStatistics(path: path), stats)
    }

    func testSummaryOfAHandMadeCountVector() {
        // 10 neurons over 100 tokens, 100 activations: the two hottest make 80 of them.
        let counts: [Float] = [5, 50, 0, 10, 30, 5, 0, 0, 0, 0]
        let entry = LocalitySummary.entry(counts: counts, tokens: 100)
        XCTAssertEqual(entry.sparsity, 0.9, accuracy: 1e-12)
        XCTAssertEqual(entry.coveringShare, 0.2, accuracy: 1e-12)
        XCTAssertEqual(entry.hottestShare, 0.8, accuracy: 1e-12)
        // One more activation elsewhere: 80 % of 101 needs a third neuron.
        var more = counts
        more[2] = 1
        XCTAssertEqual(LocalitySummary.entry(counts: more, tokens: 100).coveringShare, 0.3, accuracy: 1e-12)

        // The whole-model entry ranks the neurons of all layers together.
        let layer = ActivationStatistics.Layer(gateThresholds: [0.1], downThresholds: [0.1], counts: [counts])
        let flat = ActivationStatistics.Layer(gateThresholds: [0.1], downThresholds: [0.1], counts: [Array(repeating: 10, count: 10)])
        let stats = ActivationStatistics(sourceModel: "", corpusSHA256: "", tokens: 100, activation: "silu", gated: true,
                                         feedForwardLength: 10, sparsityTargets: [0.9], layers: [layer, flat])
        let summary = LocalitySummary(stats, targetIndex: 0)
        XCTAssertEqual(summary.layers.map(\.coveringShare), [0.2, 0.8])
        // Sorted: 50 30 10 10 ... : 160 of 200 reached after 50+30+8·10 = 10 neurons of 20.
        XCTAssertEqual(summary.overall.coveringShare, 0.5, accuracy: 1e-12)
        XCTAssertEqual(summary.overall.sparsity, 0.9, accuracy: 1e-12)

        // Hot sets: the same statistics overlap fully; a reversed layer not at all.
        XCTAssertEqual(try LocalitySummary.hotSetOverlap(stats, stats, targetIndex: 0), [1, 1])
        var reversed = stats
        reversed.layers[0].counts[0] = counts.map { 50 - $0 }
        XCTAssertEqual(try LocalitySummary.hotSetOverlap(stats, reversed, targetIndex: 0)[0], 0)
    }

    func testPlotIsSVGWithOneCurvePerLayer() throws {
        let stats = try Self.smolProfile().statistics
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ember-plot-\(UUID()).svg").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try FrequencyPlot.write(stats, targetIndex: 2, title: "SmolLM2 <135M> & co", to: path)
        let document = try XMLDocument(contentsOf: URL(fileURLWithPath: path))
        let root = try XCTUnwrap(document.rootElement())
        XCTAssertEqual(root.name, "svg")
        let curves = try root.nodes(forXPath: "//*[local-name()='polyline']")
        XCTAssertEqual(curves.count, stats.layers.count)
        let texts = try root.nodes(forXPath: "//*[local-name()='text']").compactMap(\.stringValue)
        XCTAssertTrue(texts.contains("SmolLM2 <135M> & co"))
        XCTAssertTrue(texts.contains { $0.contains("512 tokens") && $0.contains("70 %") })
        // Every point lies inside the plot area, and each curve falls from left to right.
        for case let curve as XMLElement in curves {
            let points = try XCTUnwrap(curve.attributes?.first { $0.name == "points" }?.stringValue).split(separator: " ").map {
                $0.split(separator: ",").map { Double($0)! }
            }
            XCTAssertGreaterThan(points.count, 100)
            XCTAssertTrue(points.allSatisfy { $0[0] >= 80 && $0[0] <= 700 && $0[1] >= 64 && $0[1] <= 504 })
            XCTAssertTrue(zip(points, points.dropFirst()).allSatisfy { $0[1] <= $1[1] })
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)"))
    }

    /// Synthetic activations with a known distribution: the thresholds are the exact quantiles
    /// of the values given.
    func testCalibrationAgainstExactQuantiles() {
        let f = 64, tokens = 500
        let pool = ThreadPool(threads: 2)
        var generator = SplitMix(seed: 7)
        let activated = Matrix(rows: tokens, length: f), up = Matrix(rows: tokens, length: f)
        for t in 0..<tokens {
            for i in 0..<f {
                // Neuron i's scale grows with i, so hot and cold neurons differ.
                let v = Float(generator.normal()) * (0.05 + Float(i) / Float(f))
                activated.row(t)[i] = v / (1 + exp(-v))
                up.row(t)[i] = Float(generator.normal())
            }
        }
        let profiler = ActivationProfiler(layerCount: 1, feedForwardLength: f, activation: .silu, targets: [0.8, 0.5])
        // Two batches, as a forward pass delivers them.
        profiler.add(layer: 0, tokenCount: 300, activated: activated, up: up, pool: pool)
        profiler.add(layer: 0, tokenCount: 200, activated: Matrix(rowsOf: activated, 300..<500),
                     up: Matrix(rowsOf: up, 300..<500), pool: pool)
        let stats = profiler.statistics()
        XCTAssertEqual(stats.tokens, tokens)
        XCTAssertEqual(stats.sparsityTargets, [0.5, 0.8])
        let gates = (0..<tokens).flatMap { t in (0..<f).map { abs(activated.row(t)[$0]) } }.sorted()
        let downs = (0..<tokens).flatMap { t in (0..<f).map { abs(activated.row(t)[$0] * up.row(t)[$0]) } }.sorted()
        for (s, target) in stats.sparsityTargets.enumerated() {
            let g = stats.layers[0].gateThresholds[s], d = stats.layers[0].downThresholds[s]
            let gateSparsity = Double(gates.filter { $0 < g }.count) / Double(gates.count)
            let downSparsity = Double(downs.filter { $0 < d }.count) / Double(downs.count)
            XCTAssertEqual(gateSparsity, Double(target), accuracy: 0.0005)
            XCTAssertEqual(downSparsity, Double(target), accuracy: 0.0005)
            // Within 0.1 % of the exact quantile's value.
            let exact = gates[Int(Double(target) * Double(gates.count))]
            XCTAssertEqual(g, exact, accuracy: exact * 0.001)
        }
    }

    /// ReLU models: active means act > 0, one target (the natural sparsity), thresholds 0,
    /// counts exact.
    func testReLUStatisticsCountNonZeros() {
        let f = 16, tokens = 40
        let pool = ThreadPool(threads: 2)
        let layers = (0..<2).map { _ in Matrix(rows: tokens, length: f) }
        var expected = Array(repeating: Array(repeating: Float(0), count: f), count: 2)
        var zeros = [0, 0]
        for l in 0..<2 {
            for t in 0..<tokens {
                for i in 0..<f {
                    // Layer 0: neuron i fires on tokens divisible by i + 1; layer 1: every other.
                    let fires = l == 0 ? t % (i + 1) == 0 : (t + i) % 2 == 0
                    layers[l].row(t)[i] = fires ? 1e-7 * Float(t + 1) : 0
                    if fires { expected[l][i] += 1 } else { zeros[l] += 1 }
                }
            }
        }
        let profiler = ActivationProfiler(layerCount: 2, feedForwardLength: f, activation: .relu, targets: [0.5, 0.7])
        for l in 0..<2 { profiler.add(layer: l, tokenCount: tokens, activated: layers[l], up: nil, pool: pool) }
        let stats = profiler.statistics()
        XCTAssertEqual(stats.activation, "relu")
        XCTAssertFalse(stats.gated)
        let natural = Float(zeros[0] + zeros[1]) / Float(2 * tokens * f)
        XCTAssertEqual(stats.sparsityTargets.count, 1)
        XCTAssertEqual(stats.sparsityTargets[0], natural, accuracy: 1e-6)
        for l in 0..<2 {
            XCTAssertEqual(stats.layers[l].gateThresholds, [0])
            XCTAssertEqual(stats.layers[l].downThresholds, [0])
            XCTAssertEqual(stats.layers[l].counts, [expected[l]])
        }
        XCTAssertEqual(LocalitySummary(stats, targetIndex: 0).layers[1].sparsity, 0.5, accuracy: 1e-12)
    }

    func testSHA256KnownDigests() {
        XCTAssertEqual(SHA256.hex([UInt8]()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // Two blocks of padding.
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }
}

/// A small seeded generator, so the synthetic test is the same every run.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }

    /// Box–Muller.
    mutating func normal() -> Double {
        sqrt(-2 * log(max(uniform(), 1e-300))) * cos(2 * .pi * uniform())
    }
}
