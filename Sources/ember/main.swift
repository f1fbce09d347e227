import EmberCore
import Foundation

/// `ember COMMAND [FLAGS]`: a thin layer that parses flags and calls EmberCore.
struct Command {
    let name: String
    let summary: String
    let flags: [Arguments.Flag]
    let allowsPositional: Bool
    let main: (Arguments) throws -> Void
}

let commands: [Command] = [
    Command(name: "run", summary: RunCommand.summary, flags: RunCommand.flags, allowsPositional: false, main: RunCommand.main),
    Command(name: "chat", summary: ChatCommand.summary, flags: ChatCommand.flags, allowsPositional: false, main: ChatCommand.main),
    Command(name: "perplexity", summary: PerplexityCommand.summary, flags: PerplexityCommand.flags, allowsPositional: false,
            main: PerplexityCommand.main),
    Command(name: "profile", summary: ProfileCommand.summary, flags: ProfileCommand.flags, allowsPositional: false,
            main: ProfileCommand.main),
    Command(name: "bench", summary: BenchCommand.summary, flags: BenchCommand.flags, allowsPositional: false, main: BenchCommand.main),
    Command(name: "train-predictor", summary: TrainPredictorCommand.summary, flags: TrainPredictorCommand.flags,
            allowsPositional: false, main: TrainPredictorCommand.main),
    Command(name: "place", summary: PlaceCommand.summary, flags: PlaceCommand.flags, allowsPositional: false, main: PlaceCommand.main),
    Command(name: "sparse-bench", summary: SparseBenchCommand.summary, flags: SparseBenchCommand.flags, allowsPositional: false, main: SparseBenchCommand.main),
    Command(name: "devices", summary: DevicesCommand.summary, flags: DevicesCommand.flags, allowsPositional: false,
            main: DevicesCommand.main),
    Command(name: "synth", summary: SynthCommand.summary, flags: SynthCommand.flags, allowsPositional: false, main: SynthCommand.main),
]

func usage() -> String {
    "usage: ember COMMAND [FLAGS]   (ember COMMAND --help for its flags)\n\ncommands:\n"
        + commands.map { "  " + $0.name.padding(toLength: 12, withPad: " ", startingAt: 0) + $0.summary }.joined(separator: "\n")
}

func runMain() -> Int32 {
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
    if ["--help", "-h", "help"].contains(argv[1]) {
        print(usage())
        return 0
    }
    guard let command = commands.first(where: { $0.name == argv[1] }) else {
        Terminal.error("ember: error: unknown command \"\(argv[1])\"\n\n" + usage())
        return 2
    }
    if argv.dropFirst(2).contains(where: { $0 == "--help" || $0 == "-h" }) {
        print("usage: ember \(command.name) [FLAGS]\n\(command.summary)\n\nflags:\n" + Arguments.help(command.flags))
        return 0
    }
    do {
        let arguments = try Arguments(argv.dropFirst(2), flags: command.flags, allowsPositional: command.allowsPositional)
        try command.main(arguments)
        return 0
    } catch let error as UsageError {
        Terminal.error("ember \(command.name): error: \(error)\n(ember \(command.name) --help lists the flags)")
        return 2
    } catch {
        Terminal.error("ember \(command.name): error: \(error)")
        return 1
    }
}

exit(runMain())
