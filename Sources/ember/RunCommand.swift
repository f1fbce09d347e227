import EmberCore
import Foundation

/// `ember run`: continue a prompt, streaming the text as it is produced.
enum RunCommand {
    static let flags: [Arguments.Flag] = SessionFlags.sparsity + CommonFlags.all + [
        .init(names: ["--prompt", "-p"], takesValue: true, help: "the prompt text"),
        .init(names: ["--file", "-f"], takesValue: true, help: "read the prompt from a UTF-8 file"),
        .init(names: ["--n-predict", "-n"], takesValue: true, help: "tokens to generate (default 128)"),
        .init(names: ["--chat"], takesValue: false, help: "wrap the prompt as a user turn of the model's chat template"),
        .init(names: ["--verbose-prompt"], takesValue: false, help: "print the prompt's token ids to stderr"),
        .init(names: ["--prompt-ids"], takesValue: true, help: "the prompt as comma-separated token ids instead of text"),
        .init(names: ["--print-ids"], takesValue: false, help: "print the generated token ids to stderr at the end"),
    ] + SamplingFlags.all

    static let summary = "continue a prompt, streaming tokens, then print timings"

    static func main(_ arguments: Arguments) async throws {
        let text: String?
        switch (arguments.string("--prompt"), arguments.string("--file"), arguments.string("--prompt-ids")) {
        case (let given?, nil, nil): text = given
        case (nil, let path?, nil): text = try TextInput.readFile(path)
        case (nil, nil, _?): text = nil
        case (nil, nil, nil): throw UsageError("give a prompt with -p TEXT, -f FILE or --prompt-ids IDS")
        default: throw UsageError("give one of -p, -f and --prompt-ids")
        }
        let count = try arguments.int("--n-predict", default: 128, range: 0...1 << 20)
        let settings = GenerationSettings(maxTokens: count, sampling: try SamplingFlags.settings(arguments))
        let model = try SessionFlags.model(arguments)
        let prompt: Prompt
        if let text {
            prompt = arguments.has("--chat") ? .chat([.user(text)]) : .text(text)
        } else {
            let list = arguments.string("--prompt-ids")!.split(separator: ",", omittingEmptySubsequences: false)
            let parsed = list.compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.count == list.count, parsed.allSatisfy({ $0 >= 0 && Int($0) < model.vocabularySize }) else {
                throw UsageError("--prompt-ids must be comma-separated token ids below the vocabulary size \(model.vocabularySize)")
            }
            prompt = .tokens(parsed)
        }
        let ids = model.tokens(of: prompt)
        if arguments.has("--verbose-prompt") { Terminal.note("prompt ids: \(ids)") }
        let session = try SessionFlags.session(arguments, model: model,
                                               context: SessionFlags.context(for: model, needing: ids.count + count))
        if ids.count >= session.contextLength {
            throw ModelError.contextOverflow(needed: ids.count + 1, context: session.contextLength)
        }
        var generated: [Int32] = []
        for try await event in session.generate(.tokens(ids), settings) {
            switch event {
            case .token(let token):
                if let id = token.id { generated.append(id) }
                try Terminal.write(token.text)
            case .finished(let statistics):
                try Terminal.write("\n")
                Terminal.note(timingsLine(statistics))
            }
        }
        if arguments.has("--print-ids") { Terminal.note("generated ids: " + generated.map(String.init).joined(separator: ",")) }
        if let report = await session.sparsityReport {
            Terminal.note(String(format: "[sparsity: %@, %.1f %% of FFN neurons skipped]", session.sparsityMode.description,
                                 report.skipped * 100))
        }
    }
}
