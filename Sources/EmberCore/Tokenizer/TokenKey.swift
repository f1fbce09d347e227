/// A vocabulary text as a dictionary key compared byte for byte.
///
/// Swift's `String` equality is Unicode canonical equivalence, under which distinct vocabulary
/// entries (the same syllable precomposed and decomposed, as Gemma has) would collide; tokens
/// must be told apart by their exact UTF-8 bytes, as the reference tokenizers do.
struct TokenKey: Hashable, Sendable {
    let text: String

    init(_ text: String) { self.text = text }

    init<C: Collection>(bytes: C) where C.Element == UInt8 { text = String(decoding: bytes, as: UTF8.self) }

    static func == (a: TokenKey, b: TokenKey) -> Bool {
        a.text.utf8.count == b.text.utf8.count && a.text.utf8.elementsEqual(b.text.utf8)
    }

    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
