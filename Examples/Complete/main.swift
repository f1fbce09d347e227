// A small app on Ember's public API alone: load a model, chat with it, stream the reply, stop
// at a stop string or after a number of tokens, and cancel a generation half-way.
//
//     swift run -c release ember-example MODEL.gguf "Name three colours."
import EmberCore
import Foundation

@main
struct Complete {
    static func main() async {
        let arguments = CommandLine.arguments
        guard arguments.count == 3 else {
            FileHandle.standardError.write(Data("usage: ember-example MODEL.gguf MESSAGE\n".utf8))
            exit(2)
        }
        do {
            let model = try Model(path: arguments[1])
            var options = SessionOptions()
            options.contextLength = 1024
            let session = try Session(model: model, options: options)
            print("\(model.name) (\(model.architecture)), context \(session.contextLength)")

            // A streamed reply in the model's chat format.
            let settings = GenerationSettings(maxTokens: 64, sampling: .greedy, stop: ["\n\n"])
            for try await event in session.generate(.chat([.user(arguments[2])]), settings) {
                switch event {
                case .token(let token):
                    print(token.text, terminator: "")
                case .finished(let statistics):
                    print(String(format: "\n[%d tokens, %.1f tokens/s, %@]", statistics.generatedTokens,
                                 statistics.decodeTokensPerSecond, statistics.stopReason.rawValue))
                }
            }

            // A generation the app stops early: cancelling its task ends it within a token.
            await session.reset()
            let task = Task {
                var pieces = 0
                for try await event in session.generate(.text("Once upon a time"), GenerationSettings(maxTokens: 1000)) {
                    if case .token = event { pieces += 1 }
                }
                return pieces
            }
            try await Task.sleep(nanoseconds: 200_000_000)
            task.cancel()
            print("cancelled after \((try? await task.value) ?? 0) tokens")
        } catch {
            FileHandle.standardError.write(Data("ember-example: \(error.localizedDescription)\n".utf8))
            exit(1)
        }
    }
}
