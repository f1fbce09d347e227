import Foundation
@testable import EmberCore

// Tokenizers (SentencePiece and byte-level BPE) built from fuzzed GGUF metadata, then used:
// encoding fixed texts with and without special tokens, decoding every id and some invalid ones.

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    Fuzz.writeSeedsIfAsked(Seeds.tokenizerFiles)
    return 0
}

let texts = ["hello world", " héllo\n\n  wörld ✓ 🦙", "<|im_start|>a<|im_end|><s>b</s>", "<0xC3>ab▁a 12 345"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let file = Fuzz.file(data, size) else { return 0 }
    let tokenizer: Tokenizer
    do {
        tokenizer = try Tokenizer(file: file)
    } catch {
        Fuzz.render(error)
        return 0
    }
    for text in texts {
        for (addSpecial, parseSpecial) in [(true, true), (false, false)] {
            let ids = tokenizer.encode(text, addSpecial: addSpecial, parseSpecial: parseSpecial)
            Fuzz.check(ids.allSatisfy { $0 >= 0 && Int($0) < tokenizer.vocabularySize }, "encode gave an id outside the vocabulary")
            _ = tokenizer.decode(ids, renderSpecial: parseSpecial)
        }
    }
    let n = tokenizer.vocabularySize
    let ids = (0..<min(n, 512)).map { Int32($0) } + [-1, Int32(n), .max, .min]
    _ = tokenizer.decode(ids, renderSpecial: true)
    var stream = StreamingDecoder(tokenizer: tokenizer)
    for id in ids { _ = stream.feed(id) }
    _ = stream.flush()
    _ = ChatTemplate(for: tokenizer).render([ChatMessage(role: "user", content: "hi")])
    return 0
}
