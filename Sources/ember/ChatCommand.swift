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

    static func main(_ arguments: Arguments) async throws {
        let maxReply = try arguments.int("--n-predict", default: 512, range: 1...1 << 20)
        var settings = GenerationSettings(maxTokens: maxReply, sampling: try SamplingFlags.settings(arguments))
        let model = try SessionFlags.model(arguments)
        let session = try SessionFlags.session(arguments, model: model)
        let system = arguments.string("--system").map { [ChatMessage.system($0)] } ?? []
        var messages = system

        let interactive = isatty(STDIN_FILENO) == 1
        if interactive { Terminal.note("ember chat: type a message and press Enter; Ctrl-D ends.") }
        while true {
            if interactive { try Terminal.write("> ") }
            let line: String
            do {
                guard let read = try TextInput.readLine() else { break }
                line = read
            } catch let error as UsageError {
                // One bad line does not end the conversation.
                Terminal.note("ember chat: \(error); type the message again")
                continue
            }
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            messages.append(.user(line))
            let needed = model.tokens(of: .chat(messages)).count + 1
            if needed >= session.contextLength {
                Terminal.note("ember chat: the conversation (\(needed) tokens) no longer fits the context of \(session.contextLength); "
                              + "starting a new conversation")
                messages = system + [.user(line)]
                await session.reset()
                if model.tokens(of: .chat(messages)).count + 1 >= session.contextLength {
                    Terminal.note("ember chat: this message alone does not fit the context: use a larger --ctx or a shorter message")
                    messages = system
                    continue
                }
            }
            var reply = ""
            var finished: GenerationStatistics?
            // Seeds advance per reply, so a seeded conversation is repeatable but its replies differ.
            for try await event in session.generate(.chat(messages), settings) {
                switch event {
                case .token(let token):
                    reply += token.text
                    try Terminal.write(token.text)
                case .finished(let statistics): finished = statistics
                }
            }
            try Terminal.write("\n")
            messages.append(.assistant(reply))
            if let seed = settings.sampling.seed { settings.sampling.seed = seed &+ 1 }
            if let finished {
                if arguments.has("--timings") { Terminal.note(timingsLine(finished)) }
                if finished.stopReason == .contextFull {
                    Terminal.note("ember chat: the context is full; the next message starts a new conversation")
                    messages = system
                    await session.reset()
                }
            }
        }
    }
}
