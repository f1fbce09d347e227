import Foundation

/// Everything a session is built from: threads, context, batch, the sparse FFN and its
/// companion files, and the device of hybrid runs. A plain value: fill in what you need.
///
/// Companion files default to the files beside the model: `MODEL.stats.gguf` (activation
/// statistics), `MODEL.predictor.gguf` (predictors) and `MODEL.placement.gguf` (placement).
public struct SessionOptions: Sendable, Equatable {
    /// Worker threads (default: every core).
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Positions of KV cache; nil: 2048, at most the model's context.
    public var contextLength: Int?
    /// Prompt tokens evaluated together as matrix products.
    public var batchSize = 64
    /// How the KV cache stores keys and values: f16 (the default, as llama.cpp's: half of f32's
    /// memory and reads, perplexity +0.08 % on SmolLM2), f32 (exact) or q8_0 (about a quarter;
    /// head sizes must be multiples of 32; +0.5 %).
    public var kvCacheType = KVCacheType.f16
    /// How the FFN runs; nil: `.predictor` when the model ships statistics and predictors (in
    /// its own file or beside it), else `.dense`.
    public var sparsity: SparsityMode?
    public var statisticsPath: String?
    public var predictorPath: String?
    /// Hybrid execution: the device holds attention blocks, the output head and the hottest FFN
    /// neurons in at most this many bytes, and computes them beside the CPU. Needs predictor
    /// sparsity and statistics.
    public var deviceMemoryBudget: Int?
    /// Which OpenCL device hybrid runs use.
    public var device = DeviceChoice.automatic
    /// A placement file from `Placement` (`ember place`) for the budget; used when it was solved
    /// for these settings, else the placement is solved anew.
    public var placementPath: String?
    /// The OpenCL library to load (default: the system's ICD loader, libOpenCL.so.1).
    public var openCLLibraryPath: String?

    public init() {}

    /// Checks the values that have no meaning whatever the model.
    func validate() throws {
        guard (1...1024).contains(threads) else { throw SessionError.invalidOption("threads must be in 1...1024, not \(threads)") }
        guard (1...65536).contains(batchSize) else { throw SessionError.invalidOption("the batch size must be in 1...65536, not \(batchSize)") }
        if let contextLength, contextLength < 1 { throw SessionError.invalidOption("the context must hold at least one position") }
        if let budget = deviceMemoryBudget, budget < 1 { throw SessionError.invalidOption("the device memory budget must be positive") }
    }
}

/// What is wrong with a session's options or their files.
public enum SessionError: Error, Equatable, LocalizedError, CustomStringConvertible {
    case invalidOption(String)
    case missingFile(path: String, what: String)
    case mismatch(String)
    case contextTooLarge(context: Int, model: Int)
    case cacheTooLarge(bytes: String)

    public var description: String {
        switch self {
        case .invalidOption(let detail): return detail
        case .missingFile(let path, let what): return "no \(what) at \(path)"
        case .mismatch(let detail): return detail
        case .contextTooLarge(let context, let model): return "a context of \(context) exceeds the model's context length \(model)"
        case .cacheTooLarge(let bytes): return "a KV cache of \(bytes) is more than this machine can hold: choose a smaller context"
        }
    }

    public var errorDescription: String? { description }
}
