import Foundation
@testable import EmberCore

// The real SmolLM2 (byte-level BPE) and Gemma 3 (SentencePiece) vocabularies on fuzzed input:
// the first byte picks the tokenizer and the flags; the rest is text to encode (as UTF-8,
// repaired where invalid) and, read as little-endian Int32, ids to decode (any value).

nonisolated(unsafe) var tokenizers: [Tokenizer] = []
/// Per byte-level BPE tokenizer, the bytes its vocabulary has a token for: encoding drops a
/// byte without one (as llama.cpp does), so only the others must survive a round trip.
nonisolated(unsafe) var encodableBytes: [[Bool]] = []

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    Fuzz.writeSeedsIfAsked { Seeds.texts() }
    do {
        // Installed by scripts/setup; never downloaded from here.
        tokenizers = try [KnownModel.smolLM2, .gemma3].map { known in
            let path = ModelStore.path(of: known)
            guard FileManager.default.fileExists(atPath: path) else {
                fatalError("\(path) is missing: run scripts/setup (or set EMBER_MODEL_DIR) before fuzzing the tokenizers")
            }
            return try Tokenizer(path: path)
        }
    } catch {
        fatalError("cannot load the vocabularies: \(error)")
    }
    encodableBytes = tokenizers.map { t in (0..<256).map { t.id(of: String(ByteLevelAlphabet.scalarForByte[$0])) != nil } }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let selector = data[0]
    let tokenizer = tokenizers[Int(selector & 1)]
    let rest = UnsafeBufferPointer(start: data + 1, count: size - 1)
    let text = String(decoding: rest, as: UTF8.self)
    let ids = tokenizer.encode(text, addSpecial: selector & 2 != 0, parseSpecial: selector & 4 != 0)
    Fuzz.check(ids.allSatisfy { $0 >= 0 && Int($0) < tokenizer.vocabularySize }, "encode gave an id outside the vocabulary")
    let decoded = tokenizer.decode(ids, renderSpecial: selector & 4 != 0)
    // Byte-level BPE without special tokens loses nothing but bytes the vocabulary lacks. The
    // bytes are compared: what is left after a dropped byte need not be valid UTF-8 (a
    // four-byte lead without a token leaves three continuation bytes).
    if tokenizer.kind == .bytePairEncoding, selector & 6 == 0, !text.contains("\u{FFFD}") {
        let expected = Array(text.utf8).filter { encodableBytes[Int(selector & 1)][Int($0)] }
        Fuzz.check(tokenizer.decodeBytes(ids) == expected,
                   "round trip changed \(SafeText.quoted(text, limit: 200)) into \(SafeText.quoted(decoded, limit: 200))")
    }
    var raw: [Int32] = []
    var i = 0
    while i + 4 <= rest.count {
        raw.append(Int32(littleEndian: UnsafeRawPointer(rest.baseAddress! + i).loadUnaligned(as: Int32.self)))
        i += 4
    }
    _ = tokenizer.decode(raw, renderSpecial: selector & 8 != 0)
    var stream = StreamingDecoder(tokenizer: tokenizer, renderSpecial: selector & 8 != 0)
    for id in raw + ids { _ = stream.feed(id) }
    _ = stream.flush()
    return 0
}
