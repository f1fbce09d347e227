import Foundation

/// The bounds every reader of Ember's inputs applies to sizes taken from a file (GGUF models,
/// statistics, predictors, placements), so a crafted file is rejected with an error naming the
/// limit instead of trapping on overflow or allocating without end. llama.cpp's gguf reader
/// took the same approach after its overflow CVEs (CVE-2024-25664 and following); the figures
/// here are Ember's own, each well above what published models use.
///
/// Sizes are also bounded by the bytes left in the file (the GGUF reader checks that before it
/// allocates); these limits catch what the file size alone cannot, e.g. a hyperparameter that
/// sizes a buffer never stored in the file, such as the KV cache.
public struct ReaderLimit: Sendable, Equatable, CustomStringConvertible {
    /// What is limited, as errors name it ("layers", "tensor name length").
    public let name: String
    public let range: ClosedRange<Int>

    public init(_ name: String, _ range: ClosedRange<Int>) {
        self.name = name
        self.range = range
    }

    public var description: String { "\(name) \(range.lowerBound)...\(range.upperBound)" }

    /// `value` when within the limit; otherwise `LimitError.outOfRange` naming the file, the
    /// key or tensor (`what` and `subject`, e.g. "metadata key" and "llama.block_count") and this limit.
    @discardableResult
    public func check(_ value: Int, what: String, subject: String? = nil, file: String) throws -> Int {
        guard range.contains(value) else {
            throw LimitError.outOfRange(path: file, what: what, subject: subject, value: String(value), limit: self)
        }
        return value
    }

    /// `check` for a count read as an unsigned 64-bit value.
    @discardableResult
    public func check(_ value: UInt64, what: String, subject: String? = nil, file: String) throws -> Int {
        guard value <= UInt64(Int.max), range.contains(Int(value)) else {
            throw LimitError.outOfRange(path: file, what: what, subject: subject, value: String(value), limit: self)
        }
        return Int(value)
    }
}

public enum ReaderLimits {
    // MARK: GGUF structure

    /// Longest string value or metadata key (chat templates run to tens of kilobytes).
    public static let stringLength = ReaderLimit("string length", 0...(1 << 24))
    /// Most elements in one metadata array (vocabularies and merge lists have a few hundred thousand).
    public static let arrayLength = ReaderLimit("array length", 0...(1 << 22))
    /// Most metadata values in one file, array elements included: each takes memory (24 bytes
    /// and more) whatever its size in the file, so this bounds what a header can make Ember hold.
    public static let metadataValues = ReaderLimit("metadata values", 0...(1 << 23))
    /// Most metadata keys in one file.
    public static let metadataCount = ReaderLimit("metadata count", 0...(1 << 16))
    /// Most tensors in one file (a 405B-parameter dense model has about 1,100).
    public static let tensorCount = ReaderLimit("tensor count", 0...(1 << 16))
    /// Dimensions of a tensor (ggml's maximum).
    public static let dimensions = ReaderLimit("dimensions", 1...4)
    /// Extent of one dimension.
    public static let dimensionLength = ReaderLimit("dimension length", 1...Int(Int32.max))
    /// Elements of one tensor (2^40: far past any embedding table, and × 8 bytes still fits an Int).
    public static let tensorElements = ReaderLimit("elements per tensor", 1...(1 << 40))
    /// Bytes of a tensor name (ggml names are at most 63; Ember's own are shorter).
    public static let tensorNameLength = ReaderLimit("tensor name length", 1...256)
    /// Nesting of arrays in metadata (a deeper one could exhaust the stack of a recursive reader).
    public static let arrayDepth = ReaderLimit("array nesting", 0...8)

    // MARK: hyperparameters (models, statistics, predictors, placements)

    public static let layers = ReaderLimit("layers", 1...1024)
    public static let embeddingLength = ReaderLimit("embedding length", 1...(1 << 16))
    /// FFN neurons per layer.
    public static let feedForwardLength = ReaderLimit("feed-forward length", 1...(1 << 18))
    public static let heads = ReaderLimit("attention heads", 1...1024)
    public static let kvHeads = ReaderLimit("key-value heads", 1...1024)
    public static let headDimension = ReaderLimit("head dimension", 1...1024)
    public static let vocabulary = ReaderLimit("vocabulary size", 1...(1 << 21))
    /// Positions a model declares (its trained context); the KV cache Ember allocates is
    /// the smaller of this and the context asked for.
    public static let contextLength = ReaderLimit("context length", 1...(1 << 24))
    /// Ember runs no mixture-of-experts model: a file declaring experts is refused.
    public static let experts = ReaderLimit("experts", 0...0)
    /// Rank of a predictor's hidden layer (PowerInfer's are at most a few thousand).
    public static let predictorRank = ReaderLimit("predictor rank", 1...(1 << 16))
    /// Target sparsities in a statistics file.
    public static let sparsityTargets = ReaderLimit("sparsity targets", 1...256)

    // MARK: arithmetic

    /// The product of `factors` (sizes read from `file`), or `LimitError.overflow` naming
    /// `what` (e.g. "KV cache size") when it does not fit an Int. Negative factors are refused
    /// too: a size is never negative.
    public static func checkedProduct(_ factors: [Int], what: String, subject: String? = nil, file: String) throws -> Int {
        var product = 1
        for factor in factors {
            let (next, overflow) = product.multipliedReportingOverflow(by: factor)
            guard factor >= 0, !overflow else {
                throw LimitError.overflow(path: file, what: what, subject: subject, operation: factors.map(String.init).joined(separator: " × "))
            }
            product = next
        }
        return product
    }

    /// The sum of `terms`, or `LimitError.overflow` as `checkedProduct` has it.
    public static func checkedSum(_ terms: [Int], what: String, subject: String? = nil, file: String) throws -> Int {
        var sum = 0
        for term in terms {
            let (next, overflow) = sum.addingReportingOverflow(term)
            guard term >= 0, !overflow else {
                throw LimitError.overflow(path: file, what: what, subject: subject, operation: terms.map(String.init).joined(separator: " + "))
            }
            sum = next
        }
        return sum
    }
}

/// A size from a file outside its limit, or one whose computation overflows.
public enum LimitError: Error, Equatable, CustomStringConvertible {
    /// `what` (e.g. "metadata key", "tensor") named `subject` holds `value`, outside `limit`.
    case outOfRange(path: String, what: String, subject: String?, value: String, limit: ReaderLimit)
    /// Computing `what` for `subject` as `operation` overflows.
    case overflow(path: String, what: String, subject: String?, operation: String)

    public var description: String {
        switch self {
        case .outOfRange(let path, let what, let subject, let value, let limit):
            let named = subject.map { "\(what) \(SafeText.quoted($0))" } ?? what
            return "\(path): \(named) is \(value), outside the limit on \(limit.name) "
                + "(\(limit.range.lowerBound)...\(limit.range.upperBound))"
        case .overflow(let path, let what, let subject, let operation):
            let of = subject.map { " of \(SafeText.quoted($0))" } ?? ""
            return "\(path): the \(what)\(of) overflows (\(operation))"
        }
    }
}

extension LimitError: LocalizedError {
    public var errorDescription: String? { description }
}

extension GGUFFile {
    /// The integer at `key`, checked against `limit`; nil when the key is absent.
    public func int(_ key: String, within limit: ReaderLimit) throws -> Int? {
        // A u64 above Int.max has no intValue: report it against the limit, not as a wrong type.
        if case .uint64(let big)? = metadata[key] {
            return try limit.check(big, what: "metadata key", subject: key, file: path)
        }
        guard let value = try int(key) else { return nil }
        return try limit.check(value, what: "metadata key", subject: key, file: path)
    }

    /// The integer at `key`, checked against `limit`; `GGUFError.missingKey` when absent.
    public func requiredInt(_ key: String, within limit: ReaderLimit) throws -> Int {
        guard let value = try int(key, within: limit) else { throw GGUFError.missingKey(path: path, key: key) }
        return value
    }
}
