import EmberCore
import Foundation

/// `ember COMMAND [FLAGS]`: a thin layer that parses flags into EmberCore's options and prints
/// what it returns.
struct Command: Sendable {
    let name: String
    let summary: String
    let flags: [Arguments.Flag]
    let main: @Sendable (Arguments) async throws -> Void
    /// Whether it takes arguments that are not flags (file names).
    var positional = false
}

nonisolated let commands: [Command] = [
    Command(name: "run", summary: RunCommand.summary, flags: RunCommand.flags, main: RunCommand.main),
    Command(name: "serve", summary: ServeCommand.summary, flags: ServeCommand.flags, main: ServeCommand.main),
    Command(name: "chat", summary: ChatCommand.summary, flags: ChatCommand.flags, main: ChatCommand.main),
    Command(name: "perplexity", summary: PerplexityCommand.summary, flags: PerplexityCommand.flags, main: PerplexityCommand.main),
    Command(name: "profile", summary: ProfileCommand.summary, flags: ProfileCommand.flags, main: ProfileCommand.main),
    Command(name: "bench", summary: BenchCommand.summary, flags: BenchCommand.flags, main: BenchCommand.main),
    Command(name: "train-predictor", summary: TrainPredictorCommand.summary, flags: TrainPredictorCommand.flags,
            main: TrainPredictorCommand.main),
    Command(name: "place", summary: PlaceCommand.summary, flags: PlaceCommand.flags, main: PlaceCommand.main),
    Command(name: "sparse-bench", summary: SparseBenchCommand.summary, flags: SparseBenchCommand.flags, main: SparseBenchCommand.main),
    Command(name: "devices", summary: DevicesCommand.summary, flags: DevicesCommand.flags, main: DevicesCommand.main),
    Command(name: "synth", summary: SynthCommand.summary, flags: SynthCommand.flags, main: SynthCommand.main),
    Command(name: "convert", summary: ConvertCommand.summary, flags: ConvertCommand.flags, main: ConvertCommand.main, positional: true),
]

nonisolated func usage() -> String {
    let width = commands.map(\.name.count).max()! + 2
    return "usage: ember COMMAND [FLAGS]   (ember COMMAND --help for its flags)\n\ncommands:\n"
        + commands.map { "  " + $0.name.padding(toLength: width, withPad: " ", startingAt: 0) + $0.summary }.joined(separator: "\n")
}

nonisolated func runMain() async -> Int32 {
    // Arguments must be valid UTF-8: a repaired prompt would silently differ from what was typed.
    for index in 0..<Int(CommandLine.argc) {
        guard let raw = CommandLine.unsafeArgv[index], String(validatingCString: raw) != nil else {
            Terminal.error("ember: error: argument \(index) is not valid UTF-8")
            return 2
        }
    }
    let argv = CommandLine.arguments
    guard argv.count > 1 else {
        Terminal.error(usage())
        return 2
    }
    do {
        if ["--help", "-h", "help"].contains(argv[1]) {
            try Terminal.print(usage())
            return 0
        }
        guard let command = commands.first(where: { $0.name == argv[1] }) else {
            Terminal.error("ember: error: unknown command \(SafeText.quoted(argv[1]))\n\n" + usage())
            return 2
        }
        if argv.dropFirst(2).contains(where: { $0 == "--help" || $0 == "-h" }) {
            try Terminal.print("usage: ember \(command.name) [FLAGS]\n\(command.summary)\n\nflags:\n" + Arguments.help(command.flags))
            return 0
        }
        do {
            let arguments = try Arguments(argv.dropFirst(2), flags: command.flags, allowsPositional: command.positional)
            try await command.main(arguments)
            return 0
        } catch let error as UsageError {
            Terminal.error("ember \(command.name): error: \(printable(error))\n(ember \(command.name) --help lists the flags)")
            return 2
        } catch let error as Terminal.WriteError {
            throw error
        } catch let error as ModelError {
            if case .contextOverflow = error {
                Terminal.error("ember \(command.name): error: \(printable(error)); use a larger --ctx or a shorter prompt")
            } else {
                Terminal.error("ember \(command.name): error: \(printable(error))")
            }
            return 1
        } catch {
            Terminal.error("ember \(command.name): error: \(printable(error))")
            return 1
        }
    } catch let error as Terminal.WriteError {
        // Nobody reads any more: end quietly, with the status a SIGPIPE death would give.
        if error.brokenPipe { return 141 }
        Terminal.error("ember: error: \(printable(error))")
        return 1
    } catch {
        Terminal.error("ember: error: \(printable(error))")
        return 1
    }
}

/// An error's text with any control character that escaped its maker shown as an escape: a
/// message never moves the cursor or rewrites the terminal, whatever a file held.
nonisolated func printable(_ error: Error) -> String {
    String(describing: error).split(separator: "\n", omittingEmptySubsequences: false)
        .map { SafeText.escaped(String($0), limit: 4000) }.joined(separator: "\n")
}

exit(await runMain())
