import CEmberKernels
import Foundation
@testable import EmberCore

/// The seed corpus, generated: small valid files of every kind the readers take, so the fuzzer
/// starts deep in each reader instead of at the magic number. Nothing here is checked in.
enum Seeds {
    // MARK: GGUF structure

    static func gguf() throws -> [(String, [UInt8])] {
        var w = GGUFWriter()
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(7)), ("i8", .int8(-7)), ("u16", .uint16(700)), ("i16", .int16(-700)),
            ("u32", .uint32(70_000)), ("i32", .int32(-70_000)), ("u64", .uint64(1 << 40)), ("i64", .int64(-1 << 40)),
            ("f32", .float32(0.5)), ("f64", .float64(-2.25)), ("bool", .bool(true)), ("string", .string("héllo")),
            ("general.alignment", .uint32(32)),
            ("strings", .array(.string, [.string("a"), .string(""), .string("▁b")])),
            ("floats", .array(.float32, [.float32(1), .float32(-1)])),
            ("ints", .array(.int32, [.int32(3), .int32(-3)])),
            ("nested", .array(.array, [.array(.uint8, [.uint8(1)]), .array(.string, [.string("x")])])),
        ]
        for (key, value) in values { w.set(key, value) }
        let floats = (0..<512).map { sin(Float($0)) }
        for type in [TensorType.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K] {
            w.addTensor("t.\(type)", type: type, dims: [256, 2], bytes: quantized(floats, type))
        }
        w.addTensor("t.i32", type: .i32, dims: [4], bytes: [Int32]([1, 2, 3, 4]).withUnsafeBytes { Array($0) })
        var v2 = GGUFWriter()
        v2.version = 2
        v2.set("general.name", .string("v2"))
        v2.addTensor("x", dims: [2, 2], floats: [1, 2, 3, 4])
        var pwri = v2
        pwri.magic = Array("PWRI".utf8)
        return [("all-types.gguf", try w.serialized()), ("v2.gguf", try v2.serialized()), ("pwri.gguf", try pwri.serialized()),
                ("empty.gguf", try GGUFWriter().serialized())]
    }

    // MARK: models

    /// A one-layer model of `architecture` small enough to mutate quickly: d = 32, F = 64, two
    /// heads of 16, one KV head, 16 tokens, weights in `type`, with a SentencePiece vocabulary.
    static func tinyModel(_ architecture: String, type: TensorType = .q8_0, powerInfer: Bool = false) throws -> [UInt8] {
        let d = 32, f = 64, heads = 2, kvHeads = 1, headSize = 16, vocabulary = 16
        var w = GGUFWriter()
        if powerInfer { w.magic = Array("PWRI".utf8) }
        w.set("general.architecture", .string(architecture))
        w.set("general.name", .string("tiny \(architecture)"))
        for (key, value) in [("block_count", 1), ("embedding_length", d), ("feed_forward_length", f), ("attention.head_count", heads),
                             ("attention.head_count_kv", kvHeads), ("context_length", 64), ("vocab_size", vocabulary)] {
            w.set("\(architecture).\(key)", .uint32(UInt32(value)))
        }
        w.set("\(architecture).attention.layer_norm_rms_epsilon", .float32(1e-6))
        w.set("\(architecture).rope.freq_base", .float32(10_000))
        if architecture == "gemma3" {
            w.set("gemma3.attention.key_length", .uint32(UInt32(headSize)))
            w.set("gemma3.attention.value_length", .uint32(UInt32(headSize)))
            w.set("gemma3.attention.sliding_window", .uint32(8))
        }
        for (key, value) in sentencePieceVocabulary(size: vocabulary) { w.set(key, value) }
        var random: UInt64 = 0x5EED
        func weights(_ count: Int) -> [Float] {
            (0..<count).map { _ in
                random = random &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int(random >> 40) % 2001 - 1000) / 8000
            }
        }
        func matrix(_ name: String, rows: Int, columns: Int) {
            w.addTensor(name, type: type, dims: [columns, rows], bytes: quantized(weights(rows * columns), type))
        }
        func vector(_ name: String, _ count: Int) { w.addTensor(name, dims: [count], floats: weights(count).map { 1 + $0 }) }
        matrix("token_embd.weight", rows: vocabulary, columns: d)
        vector("output_norm.weight", d)
        vector("blk.0.attn_norm.weight", d)
        matrix("blk.0.attn_q.weight", rows: heads * headSize, columns: d)
        matrix("blk.0.attn_k.weight", rows: kvHeads * headSize, columns: d)
        matrix("blk.0.attn_v.weight", rows: kvHeads * headSize, columns: d)
        matrix("blk.0.attn_output.weight", rows: d, columns: heads * headSize)
        vector("blk.0.ffn_norm.weight", d)
        matrix("blk.0.ffn_gate.weight", rows: f, columns: d)
        matrix("blk.0.ffn_up.weight", rows: f, columns: d)
        matrix("blk.0.ffn_down.weight", rows: d, columns: f)
        switch architecture {
        case "qwen2":
            vector("blk.0.attn_q.bias", heads * headSize)
            vector("blk.0.attn_k.bias", kvHeads * headSize)
            vector("blk.0.attn_v.bias", kvHeads * headSize)
        case "gemma3":
            vector("blk.0.attn_q_norm.weight", headSize)
            vector("blk.0.attn_k_norm.weight", headSize)
            vector("blk.0.post_attention_norm.weight", d)
            vector("blk.0.post_ffw_norm.weight", d)
        default:
            matrix("output.weight", rows: vocabulary, columns: d)
        }
        return try w.serialized()
    }

    static func models() throws -> [(String, [UInt8])] {
        [("llama.gguf", try tinyModel("llama")), ("qwen2.gguf", try tinyModel("qwen2", type: .f16)),
         ("gemma3.gguf", try tinyModel("gemma3", type: .q4_0)), ("mistral-k.gguf", try tinyModel("mistral", type: .f32)),
         ("powerinfer.gguf", try tinyModel("llama", type: .q5_1, powerInfer: true))]
    }

    // MARK: tokenizers

    /// A SentencePiece vocabulary of `size` tokens (at least 16): specials, byte fallbacks, pieces.
    static func sentencePieceVocabulary(size: Int = 16) -> [(String, GGUFValue)] {
        var tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0xC3>", "<0xA9>", "<start_of_turn>", "<end_of_turn>"]
        while tokens.count < size { tokens.append("p\(tokens.count)") }
        let types: [Int32] = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 3, 3] + [Int32](repeating: 1, count: size - 13)
        return [
            ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) })),
            ("tokenizer.ggml.scores", .array(.float32, tokens.indices.map { .float32(-Float($0) / 4) })),
            ("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0) })),
            ("tokenizer.ggml.bos_token_id", .uint32(1)),
            ("tokenizer.ggml.eos_token_id", .uint32(2)),
            ("tokenizer.ggml.unknown_token_id", .uint32(0)),
            ("tokenizer.chat_template", .string("{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}")),
        ]
    }

    /// A byte-level BPE vocabulary: every byte, a few merges and a special token.
    static func bytePairVocabulary(pre: String) -> [(String, GGUFValue)] {
        let bytes = (0..<256).map { String(ByteLevelAlphabet.scalarForByte[$0]) }
        let tokens = ["<|im_start|>", "<|im_end|>"] + bytes + ["he", "ll", "hell", "hello", "Ġw", "Ġwo", "ĠĠ", "Ċ"]
        return [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(.int32, ([3, 3] + [Int32](repeating: 1, count: tokens.count - 2)).map { .int32($0) })),
            ("tokenizer.ggml.merges", .array(.string, ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġ Ġ"].map { .string($0) })),
            ("tokenizer.ggml.eos_token_id", .uint32(1)),
            ("tokenizer.ggml.bos_token_id", .uint32(0)),
        ]
    }

    static func tokenizerFiles() throws -> [(String, [UInt8])] {
        var files: [(String, [UInt8])] = []
        for (name, metadata) in [("sentencepiece.gguf", sentencePieceVocabulary(size: 24)),
                                 ("bpe-gpt2.gguf", bytePairVocabulary(pre: "gpt2")),
                                 ("bpe-smollm.gguf", bytePairVocabulary(pre: "smollm")),
                                 ("bpe-llama3.gguf", bytePairVocabulary(pre: "llama-bpe")),
                                 ("bpe-qwen2.gguf", bytePairVocabulary(pre: "qwen2"))] {
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            for (key, value) in metadata { w.set(key, value) }
            files.append((name, try w.serialized()))
        }
        return files
    }

    /// Text for the real vocabularies: the first byte picks the tokenizer and the flags.
    static func texts() -> [(String, [UInt8])] {
        let samples = ["Hello, world!", "  leading spaces\tand\ttabs\n\nnew lines", "héllo wörld ✓ 🦙 日本語",
                       "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>user\nhi<end_of_turn>", "<s></s><unk>",
                       "123456789 3.14159 0x1F", "don't won't I'm", String(repeating: "a", count: 300)]
        var seeds: [(String, [UInt8])] = []
        for (i, text) in samples.enumerated() {
            for selector: UInt8 in [0, 1, 2, 3] { seeds.append(("text-\(i)-\(selector)", [selector] + Array(text.utf8))) }
        }
        seeds.append(("invalid-utf8", [0, 0xFF, 0xFE, 0xC3, 0x28, 0xE2, 0x82]))
        return seeds
    }

    // MARK: statistics, predictors, placements

    static func companions() throws -> [(String, [UInt8])] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ember-fuzz-seeds-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func written(_ name: String, _ write: (String) throws -> Void) throws -> (String, [UInt8]) {
            let path = directory.appendingPathComponent(name).path
            try write(path)
            return (name, Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        let layer = ActivationStatistics.Layer(gateThresholds: [0.1, 0.3], downThresholds: [0.05, 0.2], counts: [[5, 0, 2, 9], [3, 0, 1, 7]])
        let statistics = ActivationStatistics(sourceModel: "tiny", corpusSHA256: String(repeating: "ab", count: 32), tokens: 10,
                                              activation: "silu", gated: true, feedForwardLength: 4, sparsityTargets: [0.5, 0.8],
                                              layers: [layer, layer])
        let d = 32, f = 64, r = 8
        let predictors = PredictorSet(fc1: [(0..<(r * d)).map { Float($0 % 5) - 2 }, nil], fc2: [(0..<(f * r)).map { Float($0 % 3) - 1 }, nil],
                                      ranks: [r, 0], thresholds: [0.5, 0], inputLength: d, neuronCount: f)
        let placement = Placement(budget: 4096, granularity: 2, minimumGroups: 0, modelName: "tiny", statisticsSHA256: "",
                                  sparsityTarget: 0.5, feedForwardLength: 4, denseBlocks: [.attention(layer: 0), .outputHead],
                                  deviceNeurons: [[0, 3], []], denseBytes: 100, neuronBytes: 20, expectedDeviceShare: 0.4)
        var pwri = GGUFWriter()
        pwri.magic = Array("PWRI".utf8)
        pwri.set("general.architecture", .string("llama"))
        pwri.set("llama.block_count", .uint32(2))
        pwri.set("powerinfer.sparse_threshold", .float32(0.25))
        for l in 0..<2 {
            pwri.addTensor("blk.\(l).fc1.weight", type: .q8_0, dims: [d, r], bytes: quantized((0..<(d * r)).map { Float($0 % 7) / 7 }, .q8_0))
            pwri.addTensor("blk.\(l).fc2.weight", type: .f16, dims: [r, f], bytes: quantized((0..<(r * f)).map { Float($0 % 5) / 5 }, .f16))
        }
        return [try written("statistics.gguf") { try statistics.write(to: $0) },
                try written("predictors.gguf") { try predictors.write(to: $0) },
                try written("placement.gguf") { try placement.write(to: $0) },
                try written("placement-pwri.gguf") { try placement.write(to: $0, powerInferMagic: true) },
                ("predictors-pwri.gguf", try pwri.serialized())]
    }

    // MARK: helpers

    static func quantized(_ values: [Float], _ type: TensorType) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: type.byteCount(elements: values.count)!)
        out.withUnsafeMutableBytes { ember_quantize_row(Int32(type.rawValue), values, $0.baseAddress!, Int64(values.count)) }
        return out
    }
}
