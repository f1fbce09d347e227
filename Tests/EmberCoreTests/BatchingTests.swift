@testable import EmberCore
import EmberDownload
import Foundation
import XCTest

/// Several sequences in one forward pass (continuous batching) against each sequence alone.
final class BatchingTests: XCTestCase {
    static let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village,",
        "def fibonacci(n):",
        "List three colours:",
        "The meaning of life is",
        "Water boils at",
        "In 1969, astronauts",
        "My favourite recipe for pancakes",
    ]

    /// Greedy steps of one sequence alone: the tokens and the logits before each.
    struct Reference {
        let prompt: [Int32]
        var tokens: [Int32] = []
        var logits: [[Float]] = []
    }

    static func references(_ model: LanguageModel, _ tokenizer: Tokenizer, steps: Int) throws -> [Reference] {
        let context = Context(model: model, threads: 2, contextLength: 256)
        return try prompts.map { text in
            var reference = Reference(prompt: tokenizer.encode(text, addSpecial: true, parseSpecial: true))
            context.reset()
            var logits = try context.evaluate(reference.prompt)
            for _ in 0..<steps {
                let token = argmax(logits)
                reference.logits.append(logits)
                reference.tokens.append(token)
                logits = try context.evaluate([token])
            }
            return reference
        }
    }

    /// Largest |a - b| over two logit vectors.
    static func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    /// Each prompt is read alone into its own cache (as a single sequence reads it), then the
    /// sequences decode together, `batch` rows per pass, teacher-forced with the single-sequence
    /// tokens. Returns the largest logit difference per step over the sequences.
    static func batchedDifferences(_ model: LanguageModel, _ references: [Reference], batch: Int) throws -> (prefill: Float, decode: [Float]) {
        let context = Context(model: model, threads: 2, contextLength: 256, batchSize: max(64, batch))
        let caches = [context.cache] + (1..<batch).map { _ in KVCache(config: model.config, capacity: 256, type: .f32) }
        let output = Matrix(rows: batch, length: model.config.vocabularySize)
        var prefill: Float = 0
        for (s, reference) in references.prefix(batch).enumerated() {
            let rows = reference.prompt.enumerated().map { BatchRow(token: $1, cache: caches[s], position: $0) }
            try model.forward(batch: rows, pass: context.pass, logitRows: [rows.count - 1], into: output)
            prefill = max(prefill, maxDifference(output.array(row: 0), reference.logits[0]))
        }
        var decode: [Float] = []
        for step in 1..<references[0].tokens.count {
            let rows = (0..<batch).map { s in
                BatchRow(token: references[s].tokens[step - 1], cache: caches[s], position: caches[s].count)
            }
            try model.forward(batch: rows, pass: context.pass, logitRows: Array(0..<batch), into: output)
            decode.append((0..<batch).map { maxDifference(output.array(row: $0), references[$0].logits[step]) }.max()!)
        }
        return (prefill, decode)
    }

    /// Decoding rows give, in a batch of any size, the logits their sequence gives alone, bit
    /// for bit. Products of 4-8 or more rows take the repacked matrix-matrix kernels, a single row
    /// the matrix-vector tiles; both must give a row the same bits (same integer sums per
    /// block, same float steps). Even a last-bit difference would show: activations are
    /// quantized to 8 bits before each product, so it can move a value across a rounding step
    /// and grow through the layers (kernels that summed in another order gave 1-2.4 logits
    /// after 8 steps here, enough to turn greedy choices).
    func testSequencesInOneBatchGiveTheirSingleSequenceLogits() throws {
        for known in [KnownModel.smolLM2, .gemma3] {
            let model = try TestData.model(known)
            let tokenizer = try Tokenizer(file: model.file)
            let references = try Self.references(model, tokenizer, steps: 8)
            for batch in [1, 2, 3, 4, 8] {
                let (prefill, decode) = try Self.batchedDifferences(model, references, batch: batch)
                XCTAssertEqual(prefill, 0, "\(known.name): a prompt read alone is read as a single sequence reads it")
                XCTAssertEqual(decode.max(), 0, "\(known.name): batch \(batch), decoding rows against each sequence alone")
            }
        }
    }

    // MARK: ParallelSession against Session

    static func greedy(_ tokens: Int) -> GenerationSettings { GenerationSettings(maxTokens: tokens, sampling: .greedy) }

    /// The ids and statistics of one generation.
    static func collect(_ events: AsyncThrowingStream<GenerationEvent, Error>) async throws -> (ids: [Int32], text: String, GenerationStatistics?) {
        var ids: [Int32] = [], text = "", statistics: GenerationStatistics?
        for try await event in events {
            switch event {
            case .token(let token):
                if let id = token.id { ids.append(id) }
                text += token.text
            case .finished(let finished): statistics = finished
            }
        }
        return (ids, text, statistics)
    }

    /// Greedy generations submitted all at once give, at every slot count, the tokens and text
    /// each gives alone in a Session. A prompt chunk of 8 makes prompts span several chunks,
    /// some ending in chunks of under 4 tokens (the matrix-vector tiles), and lets prompts be read
    /// beside decoding rows.
    func testParallelGreedyGenerationsEqualSessionsAtEverySlotCount() async throws {
        let model = try Model(path: try TestData.modelPath(.smolLM2))
        var options = SessionOptions()
        options.batchSize = 8
        options.contextLength = 256
        let prompts = Self.prompts.map { Prompt.text($0) } + [.chat([.system("You are a helpful assistant."), .user("Name a fruit.")])]
        let session = try Session(model: model, options: options)
        var references: [(ids: [Int32], text: String)] = []
        for prompt in prompts {
            await session.reset()
            let (ids, text, _) = try await Self.collect(session.generate(prompt, Self.greedy(24)))
            references.append((ids, text))
        }
        for slots in [1, 3, 8] {
            let parallel = try ParallelSession(model: model, options: options, slots: slots)
            let results = try await withThrowingTaskGroup(of: (Int, [Int32], String).self) { group in
                for (i, prompt) in prompts.enumerated() {
                    group.addTask {
                        let (ids, text, _) = try await Self.collect(parallel.generate(prompt, Self.greedy(24)))
                        return (i, ids, text)
                    }
                }
                var all: [(Int, [Int32], String)] = []
                for try await result in group { all.append(result) }
                return all
            }
            for (i, ids, text) in results {
                XCTAssertEqual(ids, references[i].ids, "slots \(slots), prompt \(i)")
                XCTAssertEqual(text, references[i].text, "slots \(slots), prompt \(i)")
            }
            XCTAssertEqual(parallel.load.running, 0)
            XCTAssertEqual(parallel.load.waiting, 0)
        }
    }

    /// A second request that starts with what a slot's cache holds reads only the rest, and
    /// still gives a single sequence's tokens.
    func testARepeatedPrefixIsReadOnce() async throws {
        let model = try Model(path: try TestData.modelPath(.smolLM2))
        var options = SessionOptions()
        options.contextLength = 512
        let system = ChatMessage.system("You are Ember, a careful assistant. Answer in one short sentence, and never use lists.")
        let first = Prompt.chat([system, .user("What is the capital of France?")])
        let second = Prompt.chat([system, .user("What colour is the sky?")])
        let session = try Session(model: model, options: options)
        let reference = try await Self.collect(session.generate(second, Self.greedy(16)))
        let parallel = try ParallelSession(model: model, options: options, slots: 1)
        _ = try await Self.collect(parallel.generate(first, Self.greedy(16)))
        let (ids, _, statistics) = try await Self.collect(parallel.generate(second, Self.greedy(16)))
        XCTAssertEqual(ids, reference.ids)
        let promptLength = model.tokens(of: second).count
        let read = try XCTUnwrap(statistics?.promptTokens)
        XCTAssertLessThan(read, promptLength / 2, "the system prompt came from the cache")
        XCTAssertGreaterThan(read, 0)
    }

    /// Ending a generation's iteration frees its slot: a waiting one then runs.
    func testALeavingConsumerFreesItsSlotForTheNext() async throws {
        let model = try Model(path: try TestData.modelPath(.smolLM2))
        var options = SessionOptions()
        options.contextLength = 1024
        let parallel = try ParallelSession(model: model, options: options, slots: 1)
        var settings = Self.greedy(1000)
        settings.ignoresEndOfGeneration = true
        var seen = 0
        for try await event in parallel.generate(.text("Once upon a time"), settings) {
            if case .token = event { seen += 1 }
            if seen == 3 { break }
        }
        let (ids, _, statistics) = try await Self.collect(parallel.generate(.text("Hello"), Self.greedy(4)))
        XCTAssertEqual(ids.count, 4)
        XCTAssertEqual(statistics?.stopReason, .tokenLimit)
        XCTAssertEqual(parallel.load.running, 0)
    }

    func testPromptsThatCannotRunFailBeforeAnyWork() async throws {
        let model = try Model(path: try TestData.modelPath(.smolLM2))
        var options = SessionOptions()
        options.contextLength = 16
        let parallel = try ParallelSession(model: model, options: options, slots: 2)
        do {
            _ = try await Self.collect(parallel.generate(.tokens(Array(repeating: 1, count: 16)), Self.greedy(1)))
            XCTFail("a prompt filling the context was accepted")
        } catch let error as ModelError {
            guard case .contextOverflow = error else { return XCTFail("\(error)") }
        }
        do {
            _ = try await Self.collect(parallel.generate(.tokens([Int32(model.vocabularySize)]), Self.greedy(1)))
            XCTFail("a token outside the vocabulary was accepted")
        } catch let error as ModelError {
            guard case .invalidToken = error else { return XCTFail("\(error)") }
        }
        parallel.shutdown()
        do {
            _ = try await Self.collect(parallel.generate(.text("Hi"), Self.greedy(1)))
            XCTFail("a generation after shutdown ran")
        } catch is CancellationError {}
    }
}
