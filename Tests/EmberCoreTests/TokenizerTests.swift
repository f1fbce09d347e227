import Foundation
import Synchronization
import XCTest
@testable import EmberCore
import EmberDownload

/// Tokenizer tests against llama.cpp's output on the real models (fixtures made by
/// scripts/make-gemma-tokenizer-fixture and Fixtures/smollm2-135m-q4_1), plus hand-made GGUF files for
/// the error paths.
final class TokenizerTests: XCTestCase {
    // MARK: fixtures and models

    struct Case: Decodable {
        let text: String
        let ids: [Int32]
        let ids_parse_special: [Int32]
        let ids_with_bos: [Int32]?
    }

    struct Chat: Decodable {
        let messages: [ChatMessage]
        let prompt: String
        let ids: [Int32]
    }

    struct Fixture: Decodable {
        let model_file: String
        let add_bos: Bool
        let cases: [Case]
        let eog_ids: [Int32]
        let eval_ids: [Int32]
        let chat: [Chat]
    }

    struct SharedReference: Decodable {
        let tokenization: [Case]
    }

    static let fixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let sharedFixtures = TestData.fixtures
    static let smolLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
    static let gemma3 = "gemma-3-270m-q4_k_m.gguf"

    struct MissingModel: Error, CustomStringConvertible {
        let path: String
        var description: String { "model file \(path) is missing: set EMBER_MODEL_DIR or download it into ~/.cache/ember/models" }
    }

    /// The model's path, downloaded on first use like every end-to-end test's model.
    static func modelPath(_ name: String) -> String {
        guard let known = KnownModel.all.first(where: { $0.fileName == name }),
              let path = try? TestData.modelPath(known) else { return ModelStore.directory.appendingPathComponent(name).path }
        return path
    }

    private static let loaded = Mutex<[String: Tokenizer]>([:])

    /// The model's tokenizer, loaded once per test run. A missing model fails the test (CI
    /// downloads it), it is not skipped.
    func tokenizer(_ name: String) throws -> Tokenizer {
        if let tokenizer = Self.loaded.withLock({ $0[name] }) { return tokenizer }
        let path = Self.modelPath(name)
        guard FileManager.default.fileExists(atPath: path) else {
            let error = MissingModel(path: path)
            XCTFail(error.description)
            throw error
        }
        let tokenizer = try Tokenizer(path: path)
        Self.loaded.withLock { $0[name] = tokenizer }
        return tokenizer
    }

    func fixture(_ name: String) throws -> Fixture {
        let data = try Data(contentsOf: Self.fixturesDirectory.appendingPathComponent(name))
        return try JSONDecoder().decode(Fixture.self, from: data)
    }

    // MARK: SmolLM2 (byte-level BPE, pre-tokenizer "smollm")

    func testSmolLM2Metadata() throws {
        let t = try tokenizer(Self.smolLM2)
        XCTAssertEqual(t.kind, .bytePairEncoding)
        XCTAssertEqual(t.preTokenizerName, "smollm")
        XCTAssertEqual(t.vocabularySize, 49152)
        XCTAssertEqual(t.bos, 1)
        XCTAssertEqual(t.eos, 2)
        XCTAssertFalse(t.addsBOS)
        XCTAssertEqual(t.tokenText(2), "<|im_end|>")
        XCTAssertTrue(t.isEndOfGeneration(2))  // <|im_end|>
        XCTAssertTrue(t.isEndOfGeneration(0))  // <|endoftext|>
        XCTAssertFalse(t.isEndOfGeneration(1))  // <|im_start|>
        XCTAssertEqual(t.tokenBytes(t.id(of: "Ġthe")!), Array(" the".utf8))
        XCTAssertEqual(t.tokenBytes(-1), [])
        XCTAssertEqual(t.tokenBytes(Int32(t.vocabularySize)), [])
    }

    func testSmolLM2MatchesSharedReference() throws {
        let t = try tokenizer(Self.smolLM2)
        let data = try Data(contentsOf: Self.sharedFixtures.appendingPathComponent("smollm2-135m-q4_1/reference.json"))
        let reference = try JSONDecoder().decode(SharedReference.self, from: data)
        XCTAssertGreaterThanOrEqual(reference.tokenization.count, 10)
        for c in reference.tokenization {
            XCTAssertEqual(t.encode(c.text, addSpecial: false, parseSpecial: false), c.ids, "text: \(c.text.debugDescription)")
            XCTAssertEqual(t.encode(c.text, addSpecial: false, parseSpecial: true), c.ids_parse_special, "parse special: \(c.text.debugDescription)")
            XCTAssertEqual(t.decode(c.ids), c.text, "round trip: \(c.text.debugDescription)")
            XCTAssertEqual(t.decode(c.ids_parse_special, renderSpecial: true), c.text, "round trip (special): \(c.text.debugDescription)")
        }
    }

    func testSmolLM2MatchesExtraFixture() throws {
        try checkFixture(fixture("smollm2-tokenizer-extra.json"), tokenizer: tokenizer(Self.smolLM2))
    }

    struct PreTokenizerFixture: Decodable {
        struct Variant: Decodable { let pre: String; let ids: [[Int32]] }
        let texts: [String]
        let variants: [Variant]
    }

    /// The gpt-2, llama-bpe (Llama 3), qwen2 and default pre-tokenizers, each checked on
    /// SmolLM2's vocabulary relabelled with that `tokenizer.ggml.pre` (no model ships them here).
    func testOtherBytePairPreTokenizers() throws {
        _ = try tokenizer(Self.smolLM2)
        let source = try GGUFFile(path: Self.modelPath(Self.smolLM2))
        let data = try Data(contentsOf: Self.fixturesDirectory.appendingPathComponent("bpe-pretokenizers.json"))
        let fixture = try JSONDecoder().decode(PreTokenizerFixture.self, from: data)
        XCTAssertEqual(fixture.variants.map(\.pre), ["gpt-2", "llama-bpe", "qwen2", "default"])
        for variant in fixture.variants {
            var metadata: [String: GGUFValue] = [:]
            for key in source.metadataKeys where key.hasPrefix("tokenizer.") { metadata[key] = source.metadata[key] }
            metadata["tokenizer.ggml.pre"] = .string(variant.pre)
            let t = try Tokenizer(path: writeGGUF(metadata, name: "pre-" + variant.pre))
            XCTAssertEqual(t.preTokenizerName, variant.pre)
            for (text, ids) in zip(fixture.texts, variant.ids) {
                XCTAssertEqual(t.encode(text, addSpecial: false), ids, "\(variant.pre): \(text.prefix(60).debugDescription)")
            }
        }
    }

    // MARK: Gemma 3 (SentencePiece-style)

    func testGemma3Metadata() throws {
        let t = try tokenizer(Self.gemma3)
        XCTAssertEqual(t.kind, .sentencePiece)
        XCTAssertEqual(t.vocabularySize, 262144)
        XCTAssertEqual(t.bos, 2)
        XCTAssertEqual(t.eos, 1)
        XCTAssertTrue(t.addsBOS)
        XCTAssertFalse(t.addsSpacePrefix)
        XCTAssertNil(t.chatTemplateSource)
        XCTAssertTrue(t.isEndOfGeneration(t.id(of: "<end_of_turn>")!))
        XCTAssertTrue(t.isEndOfGeneration(1))
        XCTAssertEqual(t.tokenBytes(t.id(of: "<0x41>")!), [0x41])
        XCTAssertEqual(t.tokenBytes(t.id(of: "▁the")!), Array(" the".utf8))
        XCTAssertEqual(t.encode("Hi", addSpecial: true).first, 2)
    }

    func testGemma3MatchesFixture() throws {
        try checkFixture(fixture("gemma3-tokenizer.json"), tokenizer: tokenizer(Self.gemma3))
    }

    func checkFixture(_ f: Fixture, tokenizer t: Tokenizer) throws {
        XCTAssertEqual(t.addsBOS, f.add_bos)
        for c in f.cases {
            XCTAssertEqual(t.encode(c.text, addSpecial: false, parseSpecial: false), c.ids, "text: \(c.text.debugDescription)")
            XCTAssertEqual(t.encode(c.text, addSpecial: false, parseSpecial: true), c.ids_parse_special, "parse special: \(c.text.debugDescription)")
            if let withBOS = c.ids_with_bos {
                XCTAssertEqual(t.encode(c.text, addSpecial: true, parseSpecial: true), withBOS, "with BOS: \(c.text.debugDescription)")
            }
            XCTAssertEqual(t.decode(c.ids, renderSpecial: true), c.text, "round trip: \(c.text.debugDescription)")
        }
        XCTAssertEqual(t.endOfGenerationIDs, Set(f.eog_ids))
        let eval = try String(contentsOf: Self.sharedFixtures.appendingPathComponent("eval-gpl3.txt"), encoding: .utf8)
        let ids = t.encode(eval, addSpecial: false, parseSpecial: false)
        XCTAssertEqual(ids.count, f.eval_ids.count)
        XCTAssertTrue(ids == f.eval_ids, "eval-gpl3.txt: first difference at \(Array(zip(ids, f.eval_ids)).firstIndex { $0.0 != $0.1 } ?? -1)")
        XCTAssertEqual(t.decode(ids), eval)

        let template = ChatTemplate(for: t)
        for chat in f.chat {
            let prompt = template.render(chat.messages, addGenerationPrompt: true)
            XCTAssertEqual(prompt, chat.prompt)
            XCTAssertEqual(t.encode(prompt, addSpecial: true, parseSpecial: true), chat.ids)
        }
    }

    // MARK: speed

    func testEncodingSpeed() throws {
        let eval = try String(contentsOf: Self.sharedFixtures.appendingPathComponent("eval-gpl3.txt"), encoding: .utf8)
        for name in [Self.smolLM2, Self.gemma3] {
            // A fresh tokenizer, so the word cache starts cold.
            _ = try tokenizer(name)
            let t = try Tokenizer(path: Self.modelPath(name))
            let start = DispatchTime.now().uptimeNanoseconds
            let ids = t.encode(eval, addSpecial: false)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            print("encoding eval-gpl3.txt (\(eval.utf8.count) bytes) with \(name): \(ids.count) tokens in \(String(format: "%.1f", seconds * 1000)) ms")
            #if !DEBUG
            XCTAssertLessThan(seconds, 0.5)
            #endif
        }
    }

    /// Long runs without word breaks (one huge BPE word; a long stretch of Gemma's space tokens)
    /// must stay near-linear, not quadratic.
    func testLongRunsStayFast() throws {
        let inputs = [String(repeating: "a", count: 100_000), String(repeating: " ", count: 20_000),
                      String(repeating: "🚀", count: 10_000), String(repeating: "ab\n", count: 20_000)]
        for name in [Self.smolLM2, Self.gemma3] {
            let t = try tokenizer(name)
            for input in inputs {
                let start = DispatchTime.now().uptimeNanoseconds
                let ids = t.encode(input, addSpecial: false)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                XCTAssertEqual(t.decode(ids), input)
                #if !DEBUG
                XCTAssertLessThan(seconds, 1, "\(name): \(input.prefix(3).debugDescription)… took \(seconds) s")
                #endif
            }
        }
    }

    // MARK: streaming

    func testStreamingDecoderHoldsSplitCharacters() throws {
        let t = try tokenizer(Self.smolLM2)
        let text = "emoji 🚀🔥 and 数学 done"
        let ids = t.encode(text, addSpecial: false)
        // The emoji are spread over several byte tokens each; check that the test means something.
        XCTAssertTrue(ids.contains { String(validating: t.tokenBytes($0), as: UTF8.self) == nil })
        var decoder = StreamingDecoder(tokenizer: t)
        var out = ""
        var heldBack = false
        for id in ids {
            let chunk = decoder.feed(id)
            XCTAssertFalse(chunk.contains("\u{FFFD}"), "broken text after token \(id)")
            if chunk.isEmpty { heldBack = true }
            out += chunk
        }
        XCTAssertTrue(heldBack)
        out += decoder.flush()
        XCTAssertEqual(out, text)
    }

    func testStreamingDecoderGemmaAndControlTokens() throws {
        let t = try tokenizer(Self.gemma3)
        let text = "<start_of_turn>model\n火箭 🚀 launch<end_of_turn>"
        var decoder = StreamingDecoder(tokenizer: t)
        var out = ""
        for id in t.encode(text, addSpecial: true, parseSpecial: true) { out += decoder.feed(id) }
        out += decoder.flush()
        XCTAssertEqual(out, "model\n火箭 🚀 launch")
        var rendering = StreamingDecoder(tokenizer: t, renderSpecial: true)
        out = ""
        for id in t.encode(text, addSpecial: false, parseSpecial: true) { out += rendering.feed(id) }
        XCTAssertEqual(out + rendering.flush(), text)
    }

    func testStreamingDecoderInvalidBytes() {
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xF0, 0x9F]), 1)  // wait for the rest
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xF0, 0x9F, 0x9A, 0x80]), 5)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xE0, 0x80]), 3)  // overlong: never valid
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0x80]), 2)  // stray continuation
        XCTAssertEqual(StreamingDecoder.completePrefixLength([0x61, 0xFF]), 2)
        XCTAssertEqual(StreamingDecoder.completePrefixLength([]), 0)
    }

    // MARK: chat templates

    func testChatTemplateFormats() throws {
        let smol = try tokenizer(Self.smolLM2)
        let chatML = ChatTemplate(for: smol)
        XCTAssertEqual(chatML.format, .chatML(defaultSystem: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
        XCTAssertEqual(chatML.render([.user("Hi")]),
                       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                       + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(chatML.render([.system("Be brief."), .user("Hi")], addGenerationPrompt: false),
                       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")

        let gemma = ChatTemplate(for: try tokenizer(Self.gemma3))
        XCTAssertEqual(gemma.format, .gemma)
        XCTAssertEqual(gemma.render([.system("Be brief."), .user(" Hi \n"), .assistant("Hello."), .user("Bye")]),
                       "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                       + "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")

        let llama3 = ChatTemplate(template: "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}")
        XCTAssertEqual(llama3.format, .llama3)
        XCTAssertEqual(llama3.render([.system("S"), .user("U")]),
                       "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                       + "<|start_header_id|>assistant<|end_header_id|>\n\n")

        XCTAssertEqual(ChatTemplate(template: nil, architecture: "gemma3").format, .gemma)
        XCTAssertEqual(ChatTemplate(template: nil, architecture: "llama").format, .chatML(defaultSystem: nil))
        XCTAssertEqual(ChatTemplate(template: "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}").format,
                       .chatML(defaultSystem: nil))
        XCTAssertEqual(ChatTemplate(template: "{{'<|im_start|>system\\nYou are Qwen.<|im_end|>\\n'}}").format,
                       .chatML(defaultSystem: "You are Qwen."))
    }

    // MARK: hand-made vocabularies and malformed metadata

    func writeGGUF(_ metadata: [String: GGUFValue], name: String = #function) throws -> String {
        var writer = GGUFWriter()
        for key in metadata.keys.sorted() { writer.set(key, metadata[key]!) }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-tokenizer-tests-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent(name.filter { $0.isLetter || $0.isNumber } + ".gguf").path
        try writer.write(to: path)
        return path
    }

    static func strings(_ values: [String]) -> GGUFValue { .array(.string, values.map { .string($0) }) }
    static func ints(_ values: [Int32]) -> GGUFValue { .array(.int32, values.map { .int32($0) }) }
    static func floats(_ values: [Float]) -> GGUFValue { .array(.float32, values.map { .float32($0) }) }

    /// A small byte-level vocabulary: every byte, plus a few merges.
    func tinyBPE() -> [String: GGUFValue] {
        let bytes = (0..<256).map { String(ByteLevelAlphabet.scalarForByte[$0]) }
        let tokens = ["<|end|>"] + bytes + ["he", "ll", "hell", "hello", "Ġw", "Ġwo"]
        return [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.pre": .string("gpt2"),
            "tokenizer.ggml.tokens": Self.strings(tokens),
            "tokenizer.ggml.token_type": Self.ints([3] + Array(repeating: 1, count: tokens.count - 1)),
            "tokenizer.ggml.merges": Self.strings(["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]),
            "tokenizer.ggml.eos_token_id": .uint32(0),
        ]
    }

    func testTinyBytePairVocabulary() throws {
        let t = try Tokenizer(path: writeGGUF(tinyBPE()))
        let id = { (text: String) in t.id(of: text)! }
        XCTAssertEqual(t.encode("hello wow<|end|>", parseSpecial: true),
                       [id("hello"), id("Ġwo"), id("w"), 0])
        XCTAssertEqual(t.decode(t.encode("héllo\n")), "héllo\n")
        XCTAssertTrue(t.isEndOfGeneration(0))
    }

    func testTinySentencePieceVocabulary() throws {
        let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0xC3>", "<0xA9>"]
        let metadata: [String: GGUFValue] = [
            "tokenizer.ggml.model": .string("llama"),
            "tokenizer.ggml.tokens": Self.strings(tokens),
            "tokenizer.ggml.scores": Self.floats([0, 0, 0, -1, -2, -2, -1.5, -1, -0.5, 0, 0]),
            "tokenizer.ggml.token_type": Self.ints([2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6]),
            "tokenizer.ggml.bos_token_id": .uint32(1),
            "tokenizer.ggml.eos_token_id": .uint32(2),
            "tokenizer.ggml.unknown_token_id": .uint32(0),
        ]
        let t = try Tokenizer(path: writeGGUF(metadata))
        XCTAssertTrue(t.addsBOS)
        XCTAssertTrue(t.addsSpacePrefix)
        // " ab" with the space prefix: "▁" "a" "b" → "▁a"+"b"? "ab" scores higher → "▁" "ab" → "▁ab".
        XCTAssertEqual(t.encode("ab"), [1, 8])
        // "é" is not a token: its bytes fall back to <0xNN>.
        XCTAssertEqual(t.encode("é", addSpecial: false), [3, 9, 10])
        XCTAssertEqual(t.decode([1, 8]), "ab")
        XCTAssertEqual(t.decode([3, 9, 10]), "é")
    }

    func assertThrows(_ metadata: [String: GGUFValue], _ expected: TokenizerError, name: String = #function, line: UInt = #line) throws {
        let path = try writeGGUF(metadata, name: name + "\(line)")
        XCTAssertThrowsError(try Tokenizer(path: path), line: line) { error in
            XCTAssertEqual(error as? TokenizerError, expected, line: line)
        }
    }

    func testMalformedMetadataThrowsTypedErrors() throws {
        var metadata = tinyBPE()
        metadata["tokenizer.ggml.tokens"] = nil
        try assertThrows(metadata, .missingMetadata(key: "tokenizer.ggml.tokens"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.model"] = nil
        try assertThrows(metadata, .missingMetadata(key: "tokenizer.ggml.model"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.model"] = .string("wordpiece")
        try assertThrows(metadata, .unsupportedModel("wordpiece"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.merges"] = Self.strings(["h e", "q zz"])
        try assertThrows(metadata, .invalidMerge(index: 1, rule: "q zz"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.merges"] = Self.strings(["he"])
        try assertThrows(metadata, .invalidMerge(index: 0, rule: "he"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.merges"] = nil
        try assertThrows(metadata, .missingMetadata(key: "tokenizer.ggml.merges"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.eos_token_id"] = .uint32(100_000)
        try assertThrows(metadata, .tokenIDOutOfRange(key: "tokenizer.ggml.eos_token_id", id: 100_000, vocabularySize: 263))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.token_type"] = Self.ints([1, 1])
        try assertThrows(metadata, .invalidMetadata(key: "tokenizer.ggml.token_type", reason: "2 entries for 263 tokens"))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.tokens"] = Self.strings(["a", "b", "a"])
        try assertThrows(metadata, .duplicateToken(text: "a", firstID: 0, secondID: 2))

        metadata = tinyBPE()
        metadata["tokenizer.ggml.add_bos_token"] = .bool(true)
        XCTAssertThrowsError(try Tokenizer(path: writeGGUF(metadata))) { error in
            guard case .invalidMetadata(let key, _)? = error as? TokenizerError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "tokenizer.ggml.add_bos_token")
        }

        metadata = tinyBPE()
        metadata["tokenizer.ggml.tokens"] = .string("not an array")
        XCTAssertThrowsError(try Tokenizer(path: writeGGUF(metadata))) { error in
            guard case .invalidMetadata(let key, _)? = error as? TokenizerError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "tokenizer.ggml.tokens")
        }
    }
}
