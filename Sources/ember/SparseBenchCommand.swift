import EmberCore
import Foundation

/// `ember sparse-bench`: dense matvec against the neuron-aware sparse operators on one
/// generated FFN-shaped matrix, at several active fractions, in one run.
enum SparseBenchCommand {
    static let flags: [Arguments.Flag] = [
        .init(names: ["--rows"], takesValue: true, help: "neurons: rows of the gathered matrix (default 11008)"),
        .init(names: ["--columns"], takesValue: true, help: "hidden size: columns (default 4096)"),
        .init(names: ["--type"], takesValue: true, help: "weight type: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k (default q4_0)"),
        .init(names: ["--down-type"], takesValue: true, help: "storage type of the neuron-major down copy (default q8_0; f16 if --columns is no multiple of 32)"),
        CommonFlags.threads,
        .init(names: ["--repetitions", "-r"], takesValue: true, help: "repetitions per measurement; medians and minima reported (default 20)"),
    ]

    static let summary = "time gather matvec and column-gather axpy against dense matvec at several active fractions"

    static func parseType(_ text: String, flag: String) throws -> TensorType {
        guard let type = TensorType(name: text), SparseKernelBenchmark.supports(type) else {
            throw UsageError("\(flag): unknown or unsupported weight type \"\(text)\"")
        }
        return type
    }

    static func main(_ arguments: Arguments) async throws {
        var bench = SparseKernelBenchmark()
        bench.rows = try arguments.int("--rows", default: bench.rows, range: 1...1 << 20)
        bench.columns = try arguments.int("--columns", default: bench.columns, range: 1...1 << 20)
        bench.type = try parseType(arguments.string("--type") ?? "q4_0", flag: "--type")
        bench.downType = try arguments.string("--down-type").map { try parseType($0, flag: "--down-type") }
        bench.threads = try arguments.threads()
        bench.repetitions = try arguments.int("--repetitions", default: bench.repetitions, range: 1...10000)
        guard bench.columns % bench.type.blockSize == 0, bench.rows % bench.type.blockSize == 0 else {
            throw UsageError("--rows and --columns must be multiples of \(bench.type)'s block size \(bench.type.blockSize)")
        }
        let report = try bench.run()
        try Terminal.print("matrix \(bench.rows) x \(bench.columns) \(bench.type) (\(String(format: "%.1f", Double(report.matrixBytes) / 1e6)) MB); "
                           + "down \(bench.columns) x \(bench.rows) \(bench.type), its neuron-major copy \(report.downType) "
                           + "(transposed in \(String(format: "%.2f", report.transposeSeconds)) s); threads \(bench.threads); "
                           + "median of \(bench.repetitions), caches evicted before every timed run")
        try Terminal.print("dense up and dense down are timed next to each sparse run (same conditions); speedup = dense / sparse "
                           + "of the medians, and of the minima (best) which shared cores disturb least")
        try Terminal.print("active %  dense up µs  gather µs  speedup   best  GB/s  |  dense down µs  axpy-gather µs  speedup   best  GB/s")
        for r in report.rows {
            try Terminal.print(String(format: "%8d  %11.0f  %9.0f  %6.2fx %5.2fx  %4.1f  |  %13.0f  %14.0f  %6.2fx %5.2fx  %4.1f",
                                      r.percent, r.denseUp.median, r.gather.median, r.denseUp.median / r.gather.median,
                                      r.denseUp.best / r.gather.best, Double(r.gatherBytes) / r.gather.median / 1e3,
                                      r.denseDown.median, r.axpy.median, r.denseDown.median / r.axpy.median,
                                      r.denseDown.best / r.axpy.best, Double(r.axpyBytes) / r.axpy.median / 1e3))
        }
    }
}
