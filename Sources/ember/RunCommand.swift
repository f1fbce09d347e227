import EmberCore
import Foundation

/// `ember run`: continue a prompt, streaming the text as it is produced.
enum RunCommand {
    static let flags: [Arguments.Flag] = SparsityFlags.all + CommonFlags.all + [
        .init(names: ["--prompt", "-p"], takesValue: true, help: "the prompt text"),
        .init(names: ["--file", "-f"], takesValue: true, help: "read the prompt from a UTF-8 file"),
        .init(names: ["--n-predict", "-n"], takesValue: true, help: "tokens to generate (default 128)"),
        .init(names: ["--chat"], takesValue: false, help: "wrap the prompt as a user turn of the model's chat template"),
        .init(names: ["--verbose-prompt"], takesValue: false, help: "print the prompt's token ids to stderr"),
    ] + SamplingFlags.all

    static let summary = "continue a prompt, streaming tokens, then print timings"

    static func main(_ arguments: Arguments) throws {
        let prompt: String
        switch (arguments.string("--prompt"), arguments.string("--file")) {
        case (let text?, nil): prompt = text
        case (nil, let path?): prompt = try TextInput.readFile(path)
        case (nil, nil): throw UsageError("give a prompt with -p TEXT or -f FILE")
        default: throw UsageError("give either -p or -f, not both")
        }
        let count = try arguments.int("--n-predict", default: 128, range: 0...1 << 20)
        var sampler = Sampler(try SamplingFlags.settings(arguments))
        let loaded = try LoadedModel(arguments)
        let tokenizer = loaded.tokenizer

        let ids: [Int32]
        if arguments.has("--chat") {
            let template = ChatTemplate(for: tokenizer)
            ids = tokenizer.encode(template.render([.user(prompt)], addGenerationPrompt: true),
                                   addSpecial: true, parseSpecial: true)
        } else {
            ids = tokenizer.encode(prompt, addSpecial: true, parseSpecial: true)
        }
        if arguments.has("--verbose-prompt") { Terminal.note("prompt ids: \(ids)") }
        let session = try loaded.session(arguments, minimumContext: ids.count + count)
        if ids.count >= session.contextLength {
            throw ModelError.contextOverflow(needed: ids.count + 1, context: session.contextLength)
        }

        var decoder = StreamingDecoder(tokenizer: tokenizer)
        let statistics = try session.generate(prompt: ids, maxTokens: count, sampler: &sampler,
                                              isEnd: tokenizer.isEndOfGeneration) { token in
            if !tokenizer.isEndOfGeneration(token) { Terminal.write(decoder.feed(token)) }
            return true
        }
        Terminal.write(decoder.flush() + "\n")
        Terminal.note(timingsLine(statistics))
        if let sparse = session.pass.sparsity as? SparseExecution {
            Terminal.note(String(format: "[sparsity: %@, %.1f %% of FFN neurons skipped]", sparse.mode.description, sparse.reachedSparsity * 100))
        }
    }
}
