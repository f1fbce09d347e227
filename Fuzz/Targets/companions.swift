import Foundation
@testable import EmberCore

// The readers of Ember's companion files on the same fuzzed bytes: activation statistics,
// predictors (Ember's and PowerInfer's layouts) and placements. A predictor that loads also
// scores one input through every layer, so shapes taken from the file reach the kernels.

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    Fuzz.writeSeedsIfAsked(Seeds.companions)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let file = Fuzz.file(data, size) else { return 0 }
    do {
        let statistics = try ActivationStatistics(file: file)
        for target in statistics.sparsityTargets { _ = try? Placement.frequencies(statistics, sparsityTarget: target) }
    } catch {
        Fuzz.render(error)
    }
    do {
        let predictors = try PredictorSet(file: file)
        let input = [Float](repeating: 0.5, count: predictors.inputLength)
        var active = [Int32](repeating: 0, count: predictors.neuronCount)
        for l in predictors.layers.indices {
            let count = predictors.activeNeurons(layer: l, input: input, into: &active)
            Fuzz.check(count >= 0 && count <= predictors.neuronCount)
        }
    } catch {
        Fuzz.render(error)
    }
    do {
        let placement = try Placement(file: file)
        Fuzz.check(placement.deviceNeurons.allSatisfy { $0.allSatisfy { $0 >= 0 && Int($0) < placement.feedForwardLength } })
    } catch {
        Fuzz.render(error)
    }
    return 0
}
