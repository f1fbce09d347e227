/// Text from a file (metadata, tensor names, token pieces) made safe to show on a terminal:
/// a crafted file must not move the cursor, rewrite earlier lines or flood the screen.
public enum SafeText {
    /// Characters shown before a long text is cut.
    public static let defaultLimit = 80

    /// `text` with control characters (C0, DEL, C1, including ESC, CR, LF and NUL) and the
    /// bidirectional overrides shown as escapes (`\e`, `\r`, `\n`, `\t`, `\0`, `\u{…}`), and
    /// cut after `limit` characters with "…" added.
    public static func escaped(_ text: String, limit: Int = defaultLimit) -> String {
        var out = ""
        var shown = 0
        for scalar in text.unicodeScalars {
            if shown == limit {
                out += "…"
                break
            }
            out += escape(scalar)
            shown += 1
        }
        return out
    }

    /// `escaped(text)` in double quotes, with the quotes and backslashes inside escaped too, so
    /// where the name ends stays unambiguous.
    public static func quoted(_ text: String, limit: Int = defaultLimit) -> String {
        var inner = ""
        var shown = 0
        for scalar in text.unicodeScalars {
            if shown == limit {
                inner += "…"
                break
            }
            switch scalar {
            case "\"": inner += "\\\""
            case "\\": inner += "\\\\"
            default: inner += escape(scalar)
            }
            shown += 1
        }
        return "\"" + inner + "\""
    }

    private static func escape(_ scalar: Unicode.Scalar) -> String {
        switch scalar {
        case "\0": return "\\0"
        case "\t": return "\\t"
        case "\n": return "\\n"
        case "\r": return "\\r"
        case "\u{1B}": return "\\e"
        default:
            let v = scalar.value
            // C0, DEL, C1; and the bidirectional embeddings, overrides and isolates, which can
            // make a terminal show text in another order than it is.
            if v < 0x20 || (0x7F...0x9F).contains(v) || (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v) {
                return "\\u{" + String(v, radix: 16) + "}"
            }
            return String(scalar)
        }
    }
}
