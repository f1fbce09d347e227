import Foundation

/// Many generations of one model at once, batched continuously: `slots` sequences run
/// together, each with a KV cache of its own, and every step evaluates one token of each
/// decoding sequence in the same matrix products (plus chunks of prompts being read). Further
/// requests wait for a free slot. What a server runs; `Session` is the single-conversation form.
///
/// ```swift
/// let parallel = try ParallelSession(model: model, slots: 4)
/// for try await event in parallel.generate(.text("Once upon a time"), GenerationSettings(maxTokens: 32)) { ... }
/// ```
///
/// Each sequence's rows are computed bit for bit as a `Session` computes them alone, whatever
/// else shares the step (see BatchScheduler), so greedy generations give its text. The one
/// exception: a sparse FFN whose batch union is large enough to run the masked dense products
/// rounds otherwise, so a near-tie between two tokens can go the other way.
public final class ParallelSession: Sendable {
    public let model: Model
    public let options: SessionOptions
    /// What the assembly decided that a user should know (see `Session.notes`).
    public let notes: [String]
    /// Positions of KV cache each slot holds.
    public let contextLength: Int
    public let slots: Int
    public let sparsityMode: SparsityMode
    private let scheduler: BatchScheduler

    /// `slots` sequences at once. A step evaluates at most `max(options.batchSize, slots)`
    /// tokens: one per decoding sequence and the rest from prompts.
    public init(model: Model, options: SessionOptions = SessionOptions(), slots: Int) throws {
        guard (1...1024).contains(slots) else { throw SessionError.invalidOption("slots must be in 1...1024, not \(slots)") }
        let promptChunk = options.batchSize
        var options = options
        options.batchSize = max(options.batchSize, slots)
        var assembly = SessionAssembly(model: model, options: options)
        let context = try assembly.makeContext()
        var notes = assembly.notes
        if context.denseBlocks != nil {
            // The device's attention keeps one sequence's cache: batches of several run on the CPU.
            context.denseBlocks = nil
            notes.append("serving runs attention and the output head on the CPU (the device's KV cache holds one sequence)")
        }
        let config = model.language.config
        let slotBytes = KVCache.byteCount(config, capacity: context.contextLength, type: context.cache.type)
        guard let bytes = slotBytes.map({ $0 * slots }), bytes <= Int(ProcessInfo.processInfo.physicalMemory) else {
            throw SessionError.cacheTooLarge(bytes: "\(slots) slots of " + ByteSize.format(slotBytes ?? 0))
        }
        self.model = model
        self.options = options
        self.notes = notes
        self.slots = slots
        contextLength = context.contextLength
        sparsityMode = context.sparse?.mode ?? .dense
        scheduler = BatchScheduler(model: model, context: context, slots: slots, promptChunk: promptChunk)
    }

    deinit { scheduler.shutdown() }

    /// Generates a continuation of `prompt` once a slot is free: one event per chosen token and a
    /// last one with the statistics (as `Session.generate`). Ending the iteration early, or
    /// cancelling its task, frees the slot within one step. A prompt that does not fit the
    /// context fails at once, before any work.
    public func generate(_ prompt: Prompt, _ settings: GenerationSettings = GenerationSettings())
        -> AsyncThrowingStream<GenerationEvent, Error> {
        scheduler.submit(model.tokens(of: prompt), settings)
    }

    /// Generations running and waiting, and how full the running ones' caches are.
    public var load: SchedulerLoad { scheduler.load }

    /// Ends every generation (their streams finish with `CancellationError`) and refuses new ones.
    public func shutdown() { scheduler.shutdown() }
}
