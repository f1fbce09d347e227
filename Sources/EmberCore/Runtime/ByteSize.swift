import Foundation

/// Memory sizes as people write them (`6GiB`, `512MiB`, `1.5GB`, `4096`) and as Ember prints them.
public enum ByteSize {
    /// Bytes per unit, by lower-cased unit name. `K`, `M`, `G`, `T` alone are binary, as in `ls -h`.
    private static let units: [String: Double] = [
        "": 1, "b": 1,
        "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
        "k": 0x1p10, "m": 0x1p20, "g": 0x1p30, "t": 0x1p40,
        "kib": 0x1p10, "mib": 0x1p20, "gib": 0x1p30, "tib": 0x1p40,
    ]

    /// The byte count `text` names (rounded down to whole bytes), or nil when it is not a
    /// non-negative decimal number followed by an optional unit, or exceeds 2^62 bytes.
    public static func parse(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let number = trimmed.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        let unit = trimmed.dropFirst(number.count).trimmingCharacters(in: .whitespaces).lowercased()
        // Digits with at most one point and at least one digit: no signs, exponents or "inf".
        guard number.contains(where: \.isNumber), number.filter({ $0 == "." }).count <= 1,
              let value = Double(number), let scale = units[unit] else { return nil }
        let bytes = (value * scale).rounded(.down)
        guard bytes.isFinite, bytes <= 0x1p62 else { return nil }
        return Int(bytes)
    }

    /// `bytes` in the largest binary unit that keeps the number at least 1, e.g. "1.50 GiB".
    public static func format(_ bytes: Int) -> String {
        let names = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes), index = 0
        while abs(value) >= 1024, index < names.count - 1 {
            value /= 1024
            index += 1
        }
        return index == 0 ? "\(bytes) B" : String(format: "%.2f %@", value, names[index])
    }
}
