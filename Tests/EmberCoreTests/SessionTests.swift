import EmberCore
import Foundation
import XCTest

/// The public API as an app uses it (plain `import EmberCore`, nothing internal): a model, a
/// session, generation as an AsyncSequence with its stop conditions and cancellation.
final class SessionTests: XCTestCase {
    static let modelPath = Result { try TestData.modelPath(.smolLM2) }

    func model() throws -> Model { try Model(path: try Self.modelPath.get()) }

    func greedy(_ maxTokens: Int, stop: [String] = []) -> GenerationSettings {
        GenerationSettings(maxTokens: maxTokens, sampling: .greedy, stop: stop)
    }

    /// Everything a generation yields, in order.
    func collect(_ session: Session, _ prompt: Prompt, _ settings: GenerationSettings) async throws
        -> (ids: [Int32], text: String, statistics: GenerationStatistics?) {
        var ids: [Int32] = [], text = "", statistics: GenerationStatistics?
        for try await event in session.generate(prompt, settings) {
            switch event {
            case .token(let token):
                if let id = token.id { ids.append(id) }
                text += token.text
            case .finished(let finished): statistics = finished
            }
        }
        return (ids, text, statistics)
    }

    /// Greedy generation through the public API gives llama.cpp's tokens where its margins are
    /// clear (ReferenceTests checks the same through the engine's core).
    func testGreedyGenerationGivesLlamaCppTokens() async throws {
        let session = try Session(model: try model())
        for test in try ReferenceTests.greedyCases() {
            await session.reset()
            let (ids, text, statistics) = try await collect(session, .tokens(test.promptIDs), greedy(test.greedyIDs.count))
            let agreeing = zip(ids, test.greedyIDs).prefix { $0 == $1 }.count
            if agreeing < test.greedyIDs.count {
                // Only a near-tie in llama.cpp's own logits may send them apart.
                XCTAssertLessThan(test.margins[agreeing], ReferenceTests.flipMargin, "\(test.prompt): step \(agreeing)")
            }
            XCTAssertEqual(statistics?.promptTokens, test.promptIDs.count)
            XCTAssertEqual(text, try model().detokenize(Array(ids.prefix { !(try! model()).isEndOfGeneration($0) })))
        }
    }

    /// A stop string ends the generation before it, and its text is never shown.
    func testStopStringEndsGenerationBeforeIt() async throws {
        let session = try Session(model: try model())
        let full = try await collect(session, .text("The capital of France is"), greedy(24))
        XCTAssertGreaterThan(full.text.count, 10)
        // A stop string from the middle of the greedy text: the output is the text before it.
        let words = full.text.split(separator: " ")
        let stop = " " + words[words.count / 2]
        let expected = String(full.text[..<full.text.range(of: stop)!.lowerBound])
        await session.reset()
        let cut = try await collect(session, .text("The capital of France is"), greedy(24, stop: [stop, "never appears"]))
        XCTAssertEqual(cut.text, expected)
        XCTAssertEqual(cut.statistics?.stopReason, .stopString)
    }

    /// Cancelling the iterating task stops the generation within a token: far fewer tokens than
    /// asked for, and the session serves the next request.
    func testCancellingStopsWithinOneToken() async throws {
        let session = try Session(model: try model())
        let counted = Counter()
        let settings = greedy(10_000)
        let task = Task {
            for try await event in session.generate(.text("Once upon a time"), settings) {
                if case .token = event, counted.increment() == 3 { withUnsafeCurrentTask { $0?.cancel() } }
            }
        }
        _ = try? await task.value
        // The third token's event cancels; one more may already be on its way.
        XCTAssertLessThanOrEqual(counted.value, 4)
        let next = try await collect(session, .text("Hello"), greedy(2))
        XCTAssertEqual(next.ids.count, 2)
    }

    /// A conversation's second turn evaluates only its new tokens: the cache keeps the first.
    func testChatKeepsTheConversationInTheCache() async throws {
        let model = try model()
        let session = try Session(model: model)
        var messages: [ChatMessage] = [.user("Name a colour.")]
        let first = try await collect(session, .chat(messages), greedy(8))
        messages += [.assistant(first.text), .user("Another one.")]
        let second = try await collect(session, .chat(messages), greedy(8))
        let whole = model.tokens(of: .chat(messages)).count
        XCTAssertLessThan(try XCTUnwrap(second.statistics?.promptTokens), whole / 2)
    }

    /// Logits come out as a copy, and equal for the same tokens.
    func testLogitsAreCopies() async throws {
        let model = try model()
        let session = try Session(model: model)
        let ids = model.tokenize("The capital of France is")
        let a = try await session.logits(after: ids)
        let b = try await session.logits(after: ids)
        XCTAssertEqual(a.count, model.vocabularySize)
        XCTAssertEqual(a, b)
    }

    /// Options that cannot work are refused with errors that say why, naming no CLI flag.
    func testBadOptionsAreClearErrors() throws {
        let model = try model()
        var options = SessionOptions()
        options.contextLength = model.contextLength + 1
        XCTAssertThrowsError(try Session(model: model, options: options)) {
            XCTAssertEqual($0 as? SessionError, .contextTooLarge(context: model.contextLength + 1, model: model.contextLength))
        }
        options = SessionOptions()
        options.sparsity = .predictor
        options.predictorPath = "/nonexistent/predictor.gguf"
        XCTAssertThrowsError(try Session(model: model, options: options)) {
            XCTAssertFalse(($0 as? LocalizedError)?.errorDescription?.contains("--") ?? true, "\($0)")
        }
        options = SessionOptions()
        options.threads = 0
        XCTAssertThrowsError(try Session(model: model, options: options))
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        func increment() -> Int { lock.withLock { count += 1; return count } }
        var value: Int { lock.withLock { count } }
    }
}
