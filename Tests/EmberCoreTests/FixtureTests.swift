import XCTest

/// The llama.cpp reference fixtures are committed data: check they ship with the tests and
/// keep the shape their consumers rely on.
final class FixtureTests: XCTestCase {
    func testGemmaGreedyFixtureIsWellFormed() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "gemma3-greedy", withExtension: "json", subdirectory: "Fixtures"))
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        XCTAssertEqual(root["model_sha256"] as? String, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
        XCTAssertNotNil(root["llama_cpp_python_version"] as? String)
        let steps = try XCTUnwrap(root["steps"] as? Int)
        let cases = try XCTUnwrap(root["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 4)
        for c in cases {
            let prompt = try XCTUnwrap(c["prompt_ids"] as? [Int])
            XCTAssertEqual(prompt.first, 2, "Gemma's BOS is added")
            XCTAssertEqual((c["greedy_ids"] as? [Int])?.count, steps)
            XCTAssertEqual((c["margins"] as? [Double])?.count, steps)
            let top = try XCTUnwrap(c["last_prompt_top10"] as? [[Double]])
            XCTAssertEqual(top.count, 10)
            XCTAssertEqual(top.map { $0[1] }, top.map { $0[1] }.sorted(by: >), "highest logit first")
            XCTAssertEqual(Int(top[0][0]), (c["greedy_ids"] as? [Int])?.first, "first greedy id is the top logit")
        }
    }
}
