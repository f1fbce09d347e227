import XCTest
@testable import EmberCore

/// The shared limits and overflow-checked arithmetic every reader uses, and the escaping of
/// file text in messages.
final class ReaderLimitsTests: XCTestCase {
    func testLimitCheckNamesFileKeyAndLimit() throws {
        XCTAssertEqual(try ReaderLimits.layers.check(32, what: "metadata key", subject: "llama.block_count", file: "m.gguf"), 32)
        XCTAssertThrowsError(try ReaderLimits.layers.check(5_000_000, what: "metadata key", subject: "llama.block_count", file: "m.gguf")) { error in
            XCTAssertEqual(error as? LimitError, .outOfRange(path: "m.gguf", what: "metadata key", subject: "llama.block_count",
                                                             value: "5000000", limit: ReaderLimits.layers))
            XCTAssertEqual((error as? LocalizedError)?.errorDescription,
                           "m.gguf: metadata key \"llama.block_count\" is 5000000, outside the limit on layers (1...1024)")
        }
        XCTAssertThrowsError(try ReaderLimits.layers.check(0, what: "layer count", file: "s.gguf"))
        XCTAssertThrowsError(try ReaderLimits.tensorCount.check(UInt64.max, what: "tensor count", file: "m.gguf")) { error in
            XCTAssertTrue("\(error)".contains("18446744073709551615"), "\(error)")
        }
        XCTAssertThrowsError(try ReaderLimits.experts.check(8, what: "metadata key", subject: "llama.expert_count", file: "m.gguf"))
        XCTAssertEqual(try ReaderLimits.experts.check(0, what: "metadata key", file: "m.gguf"), 0)
    }

    func testCheckedArithmetic() throws {
        XCTAssertEqual(try ReaderLimits.checkedProduct([4096, 32, 128], what: "KV cache size", file: "m.gguf"), 4096 * 32 * 128)
        XCTAssertEqual(try ReaderLimits.checkedProduct([], what: "nothing", file: "m.gguf"), 1)
        XCTAssertThrowsError(try ReaderLimits.checkedProduct([1 << 32, 1 << 32], what: "KV cache size", file: "m.gguf")) { error in
            XCTAssertEqual(error as? LimitError, .overflow(path: "m.gguf", what: "KV cache size", subject: nil, operation: "4294967296 × 4294967296"))
            XCTAssertEqual("\(error)", "m.gguf: the KV cache size overflows (4294967296 × 4294967296)")
        }
        XCTAssertThrowsError(try ReaderLimits.checkedProduct([-1, 8], what: "size", file: "m.gguf"))
        XCTAssertEqual(try ReaderLimits.checkedSum([1, 2, 3], what: "total", file: "m.gguf"), 6)
        XCTAssertThrowsError(try ReaderLimits.checkedSum([Int.max, 1], what: "total", file: "m.gguf"))
        XCTAssertThrowsError(try ReaderLimits.checkedSum([5, -1], what: "total", file: "m.gguf"))
    }

    func testSafeTextEscapesControlsAndShortens() {
        XCTAssertEqual(SafeText.escaped("plain name.weight"), "plain name.weight")
        XCTAssertEqual(SafeText.escaped("a\u{1B}[2Jb\rc\0d\ne\tf\u{7F}g\u{9B}h"), "a\\e[2Jb\\rc\\0d\\ne\\tf\\u{7f}g\\u{9b}h")
        XCTAssertEqual(SafeText.escaped("abc\u{202E}def"), "abc\\u{202e}def")
        XCTAssertEqual(SafeText.escaped("héllo ✓"), "héllo ✓")
        let long = String(repeating: "x", count: 1_000_000)
        XCTAssertEqual(SafeText.escaped(long), String(repeating: "x", count: 80) + "…")
        XCTAssertEqual(SafeText.escaped(String(repeating: "y", count: 80)), String(repeating: "y", count: 80))
        XCTAssertEqual(SafeText.quoted("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"")
        XCTAssertEqual(SafeText.quoted("abcdef", limit: 3), "\"abc…\"")
    }
}
