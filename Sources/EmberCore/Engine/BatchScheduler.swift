import Foundation
import Synchronization

/// Continuous batching: several generations share one model, one thread pool and one forward
/// pass, each in a slot with a KV cache of its own.
///
/// One thread owns the engine. Each step it frees the slots of generations that ended or were
/// cancelled, admits waiting requests into free slots (the slot whose cache already holds the
/// longest prefix of the prompt, so a repeated system prompt is evaluated once), then runs one
/// forward pass over a batch of rows: one row per decoding sequence (its last sampled token),
/// then chunks of prompts still being read, up to `stepTokens` rows in all, so a long new prompt
/// delays running generations by one chunk at a time rather than by its whole length. Rows
/// whose logits are wanted (decoding rows, the last row of a finished prompt) are sampled, and
/// each token goes to its generation's stream at once.
///
/// Every row is computed bit for bit as it is when its sequence runs alone (`Session`, `ember
/// run`), whatever else shares the batch: a matrix product gives each row the same bits whether
/// the row is alone (matrix-vector tiles) or one of many (repacked matrix-matrix kernels), see
/// ember_kernels.h, and each row's attention is pinned to the way its sequence alone runs it
/// (`BatchRow.splitsKeys`: decoding rows and one-row prompt chunks split their keys over the
/// threads, chunks of `promptChunk` tokens from the start do not). Greedy generations thus
/// give `ember run`'s text at any batch size with the dense FFN. A sparse FFN reads the union
/// of the rows' active sets (BatchedSparseFeedForward): a decoding row still gets its single
/// token's result bit for bit while the step's union is read sparsely, but when the union is
/// large enough for the dense products to be faster, the step's rows get the masked dense FFN,
/// which rounds otherwise (so near-ties may go another way).
final class BatchScheduler: @unchecked Sendable {
    // Shared with other threads: requests handed in, the stop flag and the load, all behind
    // `condition`'s lock. Everything below `Engine state` belongs to the scheduler thread.
    private let condition = NSCondition()
    private var incoming: [Request] = []
    private var stopping = false
    private var published = SchedulerLoad()

    let slotCount: Int
    /// Positions each slot's cache holds.
    let contextLength: Int
    /// Rows of one forward pass.
    let stepTokens: Int
    /// The chunk length a single sequence reads its prompt in (`SessionOptions.batchSize`).
    let promptChunk: Int
    let model: Model

    // MARK: engine state (scheduler thread only)

    private let context: Context
    private var slots: [Slot]
    private var waiting: [Request] = []
    private let logits: Matrix
    private var admissions = 0

    private struct Slot {
        let cache: KVCache
        /// The tokens the cache holds, in order, and whether each one's attention split its keys.
        var tokens: [Int32] = []
        var splitsKeys: [Bool] = []
        var job: Job?
    }

    /// A request and its generation's progress.
    final class Request: @unchecked Sendable {
        let prompt: [Int32]
        let settings: GenerationSettings
        let continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation
        /// Set from any thread when the consumer stops listening.
        let cancelled = Atomic(false)

        init(prompt: [Int32], settings: GenerationSettings, continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation) {
            self.prompt = prompt
            self.settings = settings
            self.continuation = continuation
        }
    }

    private struct Job {
        let request: Request
        /// When it was admitted (first come, first prefilled).
        let order: Int
        var sampler: Sampler
        var decoder: StreamingDecoder
        var stops: StopStringFilter
        var history: [Int32]
        /// Prompt tokens the cache holds so far.
        var promptDone: Int
        /// The sampled token to evaluate next (decoding); nil while the prompt is read.
        var pending: Int32?
        var statistics = GenerationStatistics()
        let admitted = DispatchTime.now()
        var lastToken = DispatchTime.now()
    }

    /// `context`: the engine, its cache being slot 0's; its pass takes a step's rows (at least
    /// one per slot). `promptChunk`: the chunk a single sequence reads prompts in.
    init(model: Model, context: Context, slots: Int, promptChunk: Int) {
        precondition(slots >= 1 && context.pass.maxTokens >= slots && promptChunk >= 1)
        self.promptChunk = promptChunk
        self.model = model
        self.context = context
        slotCount = slots
        contextLength = context.contextLength
        stepTokens = context.pass.maxTokens
        self.slots = [Slot(cache: context.cache)] + (1..<slots).map { _ in
            Slot(cache: KVCache(config: model.language.config, capacity: context.contextLength, type: context.cache.type))
        }
        logits = Matrix(rows: slots, length: model.language.config.vocabularySize)
        published.slots = slots
        let thread = Thread { [self] in run() }
        thread.name = "ember.batch-scheduler"
        thread.stackSize = 4 << 20
        thread.start()
    }

    var load: SchedulerLoad {
        condition.lock()
        defer { condition.unlock() }
        return published
    }

    /// Queues a generation of `prompt`; its events come on the stream. Ending the stream's
    /// iteration (or cancelling its task) frees the slot within one step.
    func submit(_ prompt: [Int32], _ settings: GenerationSettings) -> AsyncThrowingStream<GenerationEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GenerationEvent.self, throwing: Error.self)
        if let error = check(prompt) {
            continuation.finish(throwing: error)
            return stream
        }
        let request = Request(prompt: prompt, settings: settings, continuation: continuation)
        continuation.onTermination = { [weak self] _ in
            request.cancelled.store(true, ordering: .relaxed)
            self?.wake()
        }
        condition.lock()
        if stopping {
            condition.unlock()
            continuation.finish(throwing: CancellationError())
            return stream
        }
        incoming.append(request)
        published.waiting += 1
        condition.signal()
        condition.unlock()
        return stream
    }

    /// Ends every generation (their streams finish) and stops the scheduler thread.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    deinit { shutdown() }

    private func wake() {
        condition.lock()
        condition.signal()
        condition.unlock()
    }

    /// Why `prompt` cannot be generated from, checked before it is queued.
    private func check(_ prompt: [Int32]) -> Error? {
        guard !prompt.isEmpty else { return GenerationError.emptyPrompt }
        guard prompt.count < contextLength else { return ModelError.contextOverflow(needed: prompt.count + 1, context: contextLength) }
        let vocabulary = model.vocabularySize
        if let bad = prompt.first(where: { $0 < 0 || Int($0) >= vocabulary }) {
            return ModelError.invalidToken(id: Int(bad), vocabularySize: vocabulary)
        }
        return nil
    }

    // MARK: the scheduler thread

    private func run() {
        while true {
            // Take what came in; sleep while there is nothing to do.
            condition.lock()
            while incoming.isEmpty, !stopping, waiting.isEmpty, !slots.contains(where: { $0.job != nil }) {
                condition.wait()
            }
            let stop = stopping
            waiting += incoming
            incoming.removeAll()
            condition.unlock()
            if stop {
                for request in waiting { request.continuation.finish(throwing: CancellationError()) }
                for index in slots.indices where slots[index].job != nil {
                    slots[index].job!.request.continuation.finish(throwing: CancellationError())
                    slots[index].job = nil
                }
                waiting.removeAll()
                publishLoad()
                return
            }
            dropCancelled()
            admit()
            publishLoad()
            step()
            publishLoad()
        }
    }

    private func publishLoad() {
        let running = slots.filter { $0.job != nil }
        let used = running.reduce(0) { $0 + $1.cache.count }
        condition.lock()
        published.running = running.count
        published.waiting = waiting.count + incoming.count
        published.kvCacheUsage = Double(used) / Double(slotCount * contextLength)
        condition.unlock()
    }

    /// Frees the slots of cancelled generations and forgets cancelled waiting requests.
    private func dropCancelled() {
        waiting.removeAll { request in
            guard request.cancelled.load(ordering: .relaxed) else { return false }
            request.continuation.finish()
            return true
        }
        for index in slots.indices {
            if let job = slots[index].job, job.request.cancelled.load(ordering: .relaxed) {
                job.request.continuation.finish()
                slots[index].job = nil
            }
        }
    }

    /// Moves waiting requests into free slots, first come first served, each into the free slot
    /// whose cache shares the longest prefix with its prompt.
    private func admit() {
        while !waiting.isEmpty {
            let free = slots.indices.filter { slots[$0].job == nil }
            guard !free.isEmpty else { return }
            let request = waiting.removeFirst()
            let prompt = request.prompt
            // A cached position is reused only if it was computed as this prompt read alone computes it.
            func shared(_ index: Int) -> Int {
                let slot = slots[index]
                return zip(slot.tokens.indices, prompt).prefix { p, token in
                    slot.tokens[p] == token && slot.splitsKeys[p] == splitsKeys(position: p, promptLength: prompt.count)
                }.count
            }
            let index = free.max { shared($0) < shared($1) }!
            // At least the last prompt token is evaluated again: its logits are needed.
            let kept = min(shared(index), prompt.count - 1)
            slots[index].cache.truncate(to: kept)
            slots[index].tokens.removeSubrange(kept...)
            slots[index].splitsKeys.removeSubrange(kept...)
            let settings = request.settings
            var job = Job(request: request, order: admissions, sampler: Sampler(settings.sampling),
                          decoder: StreamingDecoder(tokenizer: model.tokenizer), stops: StopStringFilter(stops: settings.stop),
                          history: prompt, promptDone: kept)
            job.statistics.promptTokens = prompt.count - kept
            admissions += 1
            if settings.maxTokens <= 0 {
                finish(&job, reason: .tokenLimit)
                continue
            }
            slots[index].job = job
        }
    }

    /// One forward pass over the decoding rows and as much prompt as fits, then sampling.
    private func step() {
        var rows: [BatchRow] = []
        var logitSlots: [Int] = []
        var logitRows: [Int] = []
        for index in slots.indices {
            guard let job = slots[index].job, let token = job.pending else { continue }
            logitSlots.append(index)
            logitRows.append(rows.count)
            rows.append(BatchRow(token: token, cache: slots[index].cache, position: slots[index].cache.count, splitsKeys: true))
        }
        var budget = stepTokens - rows.count
        let reading = slots.indices.filter { slots[$0].job != nil && slots[$0].job!.pending == nil }
            .sorted { slots[$0].job!.order < slots[$1].job!.order }
        var chunks: [(slot: Int, count: Int)] = []
        for index in reading where budget > 0 {
            let job = slots[index].job!
            let count = min(budget, job.request.prompt.count - job.promptDone)
            for k in 0..<count {
                let p = job.promptDone + k
                rows.append(BatchRow(token: job.request.prompt[p], cache: slots[index].cache, position: p,
                                     splitsKeys: splitsKeys(position: p, promptLength: job.request.prompt.count)))
            }
            chunks.append((index, count))
            if job.promptDone + count == job.request.prompt.count {
                logitSlots.append(index)
                logitRows.append(rows.count - 1)
            }
            budget -= count
        }
        guard !rows.isEmpty else { return }

        do {
            try model.language.forward(batch: rows, pass: context.pass, logitRows: logitRows, into: logits)
        } catch {
            // Requests were checked when queued, so this is an engine failure: end what ran.
            for index in Set(rows.map { row in slots.firstIndex { $0.cache === row.cache }! }) {
                slots[index].job?.request.continuation.finish(throwing: error)
                slots[index].job = nil
                slots[index].cache.truncate(to: 0)
                slots[index].tokens.removeAll()
                slots[index].splitsKeys.removeAll()
            }
            return
        }
        for (index, token) in zip(logitSlots, logitSlots.map { slots[$0].job!.pending }) {
            if let token {
                slots[index].tokens.append(token)
                slots[index].splitsKeys.append(true)
                slots[index].job!.statistics.decodeEvaluations += 1
            }
        }
        for (index, count) in chunks {
            let job = slots[index].job!
            slots[index].tokens += job.request.prompt[job.promptDone..<job.promptDone + count]
            slots[index].splitsKeys += (job.promptDone..<job.promptDone + count).map { splitsKeys(position: $0, promptLength: job.request.prompt.count) }
            slots[index].job!.promptDone += count
        }
        for (i, index) in logitSlots.enumerated() {
            sample(slot: index, logits: UnsafeBufferPointer(start: logits.row(i), count: logits.length))
        }
    }

    /// Draws the next token of the generation in `slot`, sends it, and ends the generation when
    /// it is complete.
    private func sample(slot index: Int, logits: UnsafeBufferPointer<Float>) {
        guard var job = slots[index].job else { return }
        slots[index].job = nil
        let now = DispatchTime.now()
        if job.pending == nil {
            job.statistics.promptSeconds = seconds(from: job.admitted, to: now)
        } else {
            job.statistics.decodeSeconds += seconds(from: job.lastToken, to: now)
        }
        job.lastToken = now
        let token = job.sampler.sample(logits, history: job.history)
        job.history.append(token)
        job.statistics.generatedTokens += 1
        let settings = job.request.settings
        let isEnd = !settings.ignoresEndOfGeneration && model.tokenizer.isEndOfGeneration(token)
        let piece = model.tokenizer.isEndOfGeneration(token) ? "" : job.decoder.feed(token)
        var (text, hitStop) = job.stops.feed(piece)
        var reason: StopReason?
        if hitStop {
            reason = .stopString
        } else if isEnd {
            reason = .endOfGeneration
        } else if job.statistics.generatedTokens >= settings.maxTokens {
            reason = .tokenLimit
        } else if slots[index].cache.count + 1 >= contextLength {
            reason = .contextFull
        }
        if reason != nil, !hitStop { text += job.stops.flush(job.decoder.flush()) }
        if case .terminated = job.request.continuation.yield(.token(GeneratedToken(id: token, text: text))) {
            job.request.continuation.finish()
            return
        }
        if let reason {
            finish(&job, reason: reason)
            return
        }
        job.pending = token
        slots[index].job = job
    }

    /// Whether prompt position `p`'s attention splits its keys when a single sequence reads the
    /// prompt: when its chunk (chunks of `promptChunk` from the start) is one row long.
    private func splitsKeys(position p: Int, promptLength: Int) -> Bool {
        let start = p / promptChunk * promptChunk
        return min(promptChunk, promptLength - start) == 1
    }

    /// Ends a generation whose slot is already free; the load says so before its consumer hears.
    private func finish(_ job: inout Job, reason: StopReason) {
        publishLoad()
        job.statistics.stopReason = reason
        job.request.continuation.yield(.finished(job.statistics))
        job.request.continuation.finish()
    }

    private func seconds(from start: DispatchTime, to end: DispatchTime) -> Double {
        Double(end.uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}

/// What a scheduler is doing: the figures routers balance on.
public struct SchedulerLoad: Sendable, Equatable {
    /// Generations holding a slot.
    public var running = 0
    /// Generations waiting for a slot.
    public var waiting = 0
    /// Positions in use in running generations' caches, as a share of all slots' positions.
    public var kvCacheUsage = 0.0
    public var slots = 0
}
