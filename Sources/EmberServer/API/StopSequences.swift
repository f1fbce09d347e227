/// Finds the client's stop strings in generated text that arrives in pieces, so that neither a
/// stop string nor any text after it reaches the client, even when it spans several tokens.
/// Text that could be the beginning of a stop string is held back until the next piece decides.
/// Works on Unicode scalars, so what it releases is always whole characters' scalars.
struct StopSequences {
    private let stops: [[Unicode.Scalar]]
    private var held: [Unicode.Scalar] = []

    init(_ stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }.map { Array($0.unicodeScalars) }
    }

    enum Outcome: Equatable {
        /// Text safe to send now (may be empty).
        case text(String)
        /// A stop string matched: send this text, then finish.
        case stopped(String)
    }

    mutating func feed(_ piece: String) -> Outcome {
        guard !stops.isEmpty else { return .text(piece) }
        held.append(contentsOf: piece.unicodeScalars)
        if let cut = earliestMatch() {
            let text = String(String.UnicodeScalarView(held[..<cut]))
            held.removeAll()
            return .stopped(text)
        }
        let keep = longestSuffixStartingAStop()
        let released = String(String.UnicodeScalarView(held[..<(held.count - keep)]))
        held.removeFirst(held.count - keep)
        return .text(released)
    }

    /// What is still held when generation ends without a stop string.
    mutating func flush() -> String {
        defer { held.removeAll() }
        return String(String.UnicodeScalarView(held))
    }

    /// Where the earliest stop string begins in the held text.
    private func earliestMatch() -> Int? {
        var earliest: Int?
        for stop in stops where stop.count <= held.count {
            for start in 0...(held.count - stop.count) where earliest.map({ start < $0 }) ?? true {
                if held[start..<(start + stop.count)].elementsEqual(stop) {
                    earliest = start
                    break
                }
            }
        }
        return earliest
    }

    /// Length of the longest end of the held text that a stop string begins with.
    private func longestSuffixStartingAStop() -> Int {
        var longest = 0
        for stop in stops {
            for length in stride(from: min(stop.count - 1, held.count), to: longest, by: -1)
            where held[(held.count - length)...].elementsEqual(stop[..<length]) {
                longest = length
                break
            }
        }
        return longest
    }
}
