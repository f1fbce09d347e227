import XCTest
@testable import EmberCore

/// Each input the fuzz targets (Fuzz/) found crashing Ember, kept as a regression test.
final class FuzzFindingTests: XCTestCase {
    func tokenizerError(_ metadata: [(String, GGUFValue)]) throws -> Error? {
        var w = GGUFWriter()
        for (k, v) in metadata { w.set(k, v) }
        let file = try GGUFFile(file: try MappedFile(bytes: try w.serialized(), path: "fuzz.gguf"))
        do {
            _ = try Tokenizer(file: file)
        } catch {
            return error
        }
        return nil
    }

    func assertClean(_ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(message.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) },
                       SafeText.escaped(message, limit: 300), file: file, line: line)
        XCTAssertLessThan(message.count, 400, file: file, line: line)
    }

    /// tokenizer-gguf: a tokenizer model name with control characters reached the message raw.
    func testTokenizerMessagesEscapeFileText() throws {
        let hostile = "ll\u{1}\0a\u{1B}[2J" + String(repeating: "x", count: 10_000)
        let error = try XCTUnwrap(tokenizerError([("tokenizer.ggml.model", .string(hostile))]))
        XCTAssertEqual(error as? TokenizerError, .unsupportedModel(hostile))
        assertClean("\(error)")
        XCTAssertTrue("\(error)".hasPrefix("tokenizer model \"ll\\u{1}\\0a\\e[2Jxxx"), "\(error)")

        let tokens: GGUFValue = .array(.string, [.string("a\r\u{1B}"), .string("a\r\u{1B}")])
        let duplicate = try XCTUnwrap(tokenizerError([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", tokens)]))
        assertClean("\(duplicate)")
        assertClean((duplicate as? LocalizedError)?.errorDescription ?? "")
    }
}
