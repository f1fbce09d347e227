import EmberCore
import Foundation

/// `ember chat`: a conversation in the model's chat format. Each turn re-renders the whole
/// conversation, and the session evaluates only what its cache does not already hold.
enum ChatCommand {
    static let flags: [Arguments.Flag] = CommonFlags.all + [
        .init(names: ["--system", "-s"], takesValue: true, help: "system message (default: the template's own)"),
        .init(names: ["--n-predict", "-n"], takesValue: true, help: "most tokens per reply (default 512)"),
        .init(names: ["--timings"], takesValue: false, help: "print timings after every reply"),
    ] + SamplingFlags.all

    static let summary = "talk with the model in its chat format (Ctrl-D ends)"

    static func main(_ arguments: Arguments) throws {
        let maxReply = try arguments.int("--n-predict", default: 512, range: 1...1 << 20)
        var sampler = Sampler(try SamplingFlags.settings(arguments))
        let loaded = try LoadedModel(arguments)
        let tokenizer = loaded.tokenizer
        let template = ChatTemplate(for: tokenizer)
        let session = try loaded.session(arguments)
        var messages: [ChatMessage] = []
        if let system = arguments.string("--system") { messages.append(.system(system)) }

        let interactive = isatty(STDIN_FILENO) == 1
        if interactive { Terminal.note("ember chat: type a message and press Enter; Ctrl-D ends.") }
        while true {
            if interactive { Terminal.write("> ") }
            guard let line = try TextInput.readLine() else { break }
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            messages.append(.user(line))
            let ids = tokenizer.encode(template.render(messages, addGenerationPrompt: true), addSpecial: true, parseSpecial: true)
            guard ids.count + 1 < session.contextLength else {
                throw ModelError.contextOverflow(needed: ids.count + 1, context: session.contextLength)
            }
            var decoder = StreamingDecoder(tokenizer: tokenizer)
            var reply: [Int32] = []
            let statistics = try session.generate(prompt: ids, maxTokens: maxReply, sampler: &sampler,
                                                  isEnd: tokenizer.isEndOfGeneration) { token in
                if !tokenizer.isEndOfGeneration(token) {
                    reply.append(token)
                    Terminal.write(decoder.feed(token))
                }
                return true
            }
            Terminal.write(decoder.flush() + "\n")
            messages.append(.assistant(tokenizer.decode(reply)))
            if arguments.has("--timings") { Terminal.note(timingsLine(statistics)) }
            if statistics.stopReason == .contextFull {
                throw ModelError.contextOverflow(needed: session.contextLength + 1, context: session.contextLength)
            }
        }
    }
}
