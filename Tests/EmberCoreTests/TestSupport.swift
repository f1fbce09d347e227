@testable import EmberCore
import EmberDownload
import Foundation
import XCTest

/// Where the tests find the real models and llama.cpp's reference outputs.
enum TestData {
    /// llama.cpp's reference outputs, copied from ../shared/fixtures so a checkout anywhere
    /// tests the same (their README travels with them).
    static let localFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let fixtures = localFixtures
    static let smolFixtures = fixtures.appendingPathComponent("smollm2-135m-q4_1")
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The path of a model, downloaded on first use (scripts/setup or an earlier run usually
    /// has it already). A failed download fails the test; it is never skipped silently.
    static func modelPath(_ model: KnownModel) throws -> String {
        lock.lock()
        defer { lock.unlock() }
        return try ModelStore.ensure(model) { print("tests: \($0)") }
    }

    /// One loaded model per file, shared by the tests of a run (they only read it).
    nonisolated(unsafe) private static var loaded: [String: LanguageModel] = [:]
    private static let lock = NSLock(), modelLock = NSLock()

    static func model(_ known: KnownModel) throws -> LanguageModel {
        let path = try modelPath(known)
        modelLock.lock()
        defer { modelLock.unlock() }
        if let model = loaded[path] { return model }
        let model = try LanguageModel(path: path)
        loaded[path] = model
        return model
    }

    /// Skips the calling test when libOpenCL.so.1 is absent, and only then (`what`: what cannot
    /// be tested without it).
    static func requireOpenCL(_ what: String) throws {
        if case let .failure(unavailable) = OpenCLLibrary.load() {
            throw XCTSkip("libOpenCL.so.1 is absent, so \(what) cannot be tested here "
                          + "(scripts/setup --opencl installs PoCL): \(unavailable.reason)")
        }
    }

    static func json(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
}

/// The input of one layer's FFN for the last token of a prompt, decoded as a single token
/// after the rest: what a sparse FFN sees there.
final class FeedForwardInputCapture: FeedForwardSparsity {
    let layer: Int
    let normed: Matrix
    let residual: Matrix

    init(layer: Int, config: ModelConfig) {
        self.layer = layer
        normed = Matrix(rows: 1, length: config.embeddingLength)
        residual = Matrix(rows: 1, length: config.embeddingLength)
    }

    func feedForward(_ f: FeedForward, layer: Int, input: Matrix, into output: Matrix, pass: ForwardPass) {
        if layer == self.layer {
            normed.row(0).update(from: input.row(0), count: input.length)
            residual.row(0).update(from: pass.x.row(0), count: pass.x.length)
        }
        output.row(0).update(repeating: 0, count: output.length)
    }

    /// Runs `prompt` in `context` and leaves `context.pass` as at `layer`'s FFN for its last
    /// token: `pass.x` the residual entering the FFN; returns the normed input.
    static func input(of layer: Int, context: Context, prompt: [Int32]) throws -> Matrix {
        try context.evaluate(Array(prompt.dropLast()))
        let capture = FeedForwardInputCapture(layer: layer, config: context.model.config)
        let saved = context.pass.sparsity
        context.pass.sparsity = capture
        defer { context.pass.sparsity = saved }
        try context.evaluate(Array(prompt.suffix(1)))
        context.pass.x.row(0).update(from: capture.residual.row(0), count: capture.residual.length)
        return capture.normed
    }
}

/// The kernel families this CPU runs, best first: the tests that compare paths run each.
enum KernelFamilies {
    static var available: [KernelFamily] { KernelFamily.allCases.filter { $0.rawValue <= KernelFamily.best.rawValue }.reversed() }

    /// Runs `body` with the kernels capped at `family`, then lifts the cap.
    static func with<T>(_ family: KernelFamily, _ body: () throws -> T) rethrows -> T {
        KernelFamily.limit(to: family)
        defer { KernelFamily.limit(to: nil) }
        return try body()
    }
}
