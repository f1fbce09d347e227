@testable import EmberCore
import Foundation
import XCTest

final class SamplerTests: XCTestCase {
    private func draw(_ logits: [Float], _ settings: SamplerSettings, times: Int, history: [Int32] = []) -> [Int] {
        var sampler = Sampler(settings)
        var counts = Array(repeating: 0, count: logits.count)
        logits.withUnsafeBufferPointer { buffer in
            for _ in 0..<times { counts[Int(sampler.sample(buffer, history: history))] += 1 }
        }
        return counts
    }

    private func settings(temperature: Float = 1, topK: Int = 0, topP: Float = 1, minP: Float = 0, seed: UInt64 = 7) -> SamplerSettings {
        var s = SamplerSettings()
        s.temperature = temperature
        s.topK = topK
        s.topP = topP
        s.minP = minP
        s.seed = seed
        return s
    }

    func testGreedyTakesTheLargestLogit() {
        XCTAssertEqual(draw([0.1, 3, -2, 2.9], .greedy, times: 5), [0, 5, 0, 0])
    }

    func testRepeatPenaltyDividesPositiveAndMultipliesNegativeLogits() {
        var s = SamplerSettings.greedy
        s.repeatPenalty = 1.5
        // 2.0 / 1.5 = 1.33 falls below 1.9, so the repeated token loses.
        XCTAssertEqual(draw([2.0, 1.9], s, times: 1, history: [0]), [0, 1])
        // -1.0 * 1.5 = -1.5 falls below -1.2.
        XCTAssertEqual(draw([-1.0, -1.2], s, times: 1, history: [0]), [0, 1])
    }

    func testPresenceAndFrequencyPenaltiesSubtractByCount() {
        var s = SamplerSettings.greedy
        s.presencePenalty = 0.5
        // Token 0 seen once: 2.0 - 0.5 = 1.5 < 1.9.
        XCTAssertEqual(draw([2.0, 1.9], s, times: 1, history: [0]), [0, 1])
        s.presencePenalty = 0
        s.frequencyPenalty = 0.1
        // Token 0 seen three times: 2.0 - 0.3 = 1.7 < 1.9 - 0.1 (token 1 seen once); then the other way round.
        XCTAssertEqual(draw([2.0, 1.9], s, times: 1, history: [0, 0, 0, 1]), [0, 1])
        XCTAssertEqual(draw([2.0, 1.9], s, times: 1, history: [0, 1, 1]), [1, 0])
        // Outside the window of recent tokens nothing is counted.
        s.repeatLastN = 1
        XCTAssertEqual(draw([2.0, 1.9], s, times: 1, history: [0, 0, 0, 1]), [1, 0])
        // A negative penalty favours what was seen.
        s.repeatLastN = 64
        s.frequencyPenalty = -1
        XCTAssertEqual(draw([1.0, 1.9], s, times: 1, history: [0]), [1, 0])
    }

    func testDrawsFollowTheSoftmaxDistribution() {
        let logits: [Float] = [log(0.5), log(0.3), log(0.2)]
        let n = 20_000
        let counts = draw(logits, settings(), times: n)
        // Binomial standard deviation is at most sqrt(n/4) ≈ 71 draws; allow 5 of them.
        for (count, p) in zip(counts, [0.5, 0.3, 0.2]) {
            XCTAssertEqual(Double(count), p * Double(n), accuracy: 5 * (Double(n) / 4).squareRoot())
        }
    }

    func testTemperatureSharpensTheDistribution() {
        let logits: [Float] = [log(0.5), log(0.3), log(0.2)]
        // At T = 0.5 the probabilities go as p², normalised: 0.25/0.38 ≈ 0.658 for the first.
        let counts = draw(logits, settings(temperature: 0.5), times: 20_000)
        XCTAssertEqual(Double(counts[0]) / 20_000, 0.25 / 0.38, accuracy: 0.025)
    }

    func testTopKTopPAndMinPCutTheTail() {
        let logits: [Float] = [log(0.5), log(0.3), log(0.15), log(0.05)]
        XCTAssertEqual(draw(logits, settings(topK: 2), times: 2_000)[2...].reduce(0, +), 0)
        // Top-p 0.6: 0.5 alone is short of 0.6, 0.5 + 0.3 reaches it; the rest never appear.
        XCTAssertEqual(draw(logits, settings(topP: 0.6), times: 2_000)[2...].reduce(0, +), 0)
        // Min-p 0.4 keeps tokens with p ≥ 0.4 · 0.5 = 0.2.
        let minP = draw(logits, settings(minP: 0.4), times: 2_000)
        XCTAssertEqual(minP[2...].reduce(0, +), 0)
        XCTAssertGreaterThan(minP[1], 0)
        XCTAssertEqual(draw(logits, settings(topK: 1), times: 100)[0], 100)
    }

    func testASeedRepeatsTheSameDraws() {
        let logits = (0..<50).map { Float($0 % 7) * 0.3 }
        XCTAssertEqual(draw(logits, settings(seed: 123), times: 300), draw(logits, settings(seed: 123), times: 300))
        XCTAssertNotEqual(draw(logits, settings(seed: 1), times: 300), draw(logits, settings(seed: 2), times: 300))
    }
}
