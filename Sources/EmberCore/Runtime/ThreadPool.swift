import CEmberKernels
import Foundation
import Synchronization

/// A fixed set of threads that run one job at a time, all together: `run { thread in ... }`
/// calls the body once on each thread (the caller is thread 0) and returns when all are done.
///
/// A decode step of a small model is a few hundred such jobs of some microseconds each, so the
/// hand-off must cost far less than a microsecond: idle workers spin on an atomic generation
/// counter for a while before they sleep on a condition variable.
final class ThreadPool: @unchecked Sendable {
    let threadCount: Int
    private let state: State

    init(threads: Int) {
        threadCount = max(1, threads)
        state = State()
        for index in 1..<threadCount {
            let state = self.state
            let thread = Thread { state.workerLoop(index: index) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    deinit {
        state.stop(workers: threadCount - 1)
    }

    /// Runs `body(threadIndex)` on every thread and waits for all of them.
    func run(_ body: (Int) -> Void) {
        if threadCount == 1 {
            body(0)
            return
        }
        withoutActuallyEscaping(body) { body in
            state.start(body, workers: threadCount - 1)
            body(0)
            state.waitForWorkers()
        }
    }

    /// Splits `0..<count` into one contiguous range per thread (multiples of `granularity`
    /// except the last) and runs `body(range)` on each; empty ranges are skipped.
    func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Range<Int>) -> Void) {
        run { thread in
            let range = Self.share(of: count, thread: thread, threads: threadCount, granularity: granularity)
            if !range.isEmpty { body(range) }
        }
    }

    /// The part of `0..<count` that thread `thread` of `threads` takes.
    static func share(of count: Int, thread: Int, threads: Int, granularity: Int = 1) -> Range<Int> {
        let units = (count + granularity - 1) / granularity
        let start = min(count, units * thread / threads * granularity)
        let end = min(count, units * (thread + 1) / threads * granularity)
        return start..<max(start, end)
    }

    /// What the workers share; they hold it strongly, so the pool itself can go away and tell
    /// them to stop.
    private final class State: @unchecked Sendable {
        let generation = Atomic<Int>(0)
        let pending = Atomic<Int>(0)
        let sleepers = Atomic<Int>(0)
        let stopping = Atomic<Bool>(false)
        let condition = NSCondition()
        /// The current job; written before `generation` is bumped, read after it is seen.
        var job: ((Int) -> Void)?

        /// Spin iterations before an idle worker sleeps (with pause, roughly 50-100 µs).
        static let spinLimit = 20_000
        /// Spin iterations before a waiting caller starts yielding its core (a few µs).
        static let yieldAfter = 2_000

        func start(_ body: @escaping (Int) -> Void, workers: Int) {
            job = body
            pending.store(workers, ordering: .releasing)
            // Sequentially consistent with the worker's sleepers/generation pair: either the
            // worker sees the new generation or we see it asleep and wake it.
            generation.add(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                condition.lock()
                condition.broadcast()
                condition.unlock()
            }
        }

        func waitForWorkers() {
            // Spin briefly, then yield: if a worker lost its core to another process, spinning
            // on would only keep it off the core longer.
            var spins = 0
            while pending.load(ordering: .acquiring) > 0 {
                if spins < Self.yieldAfter { ember_cpu_relax(); spins += 1 } else { sched_yield() }
            }
            job = nil
        }

        func stop(workers: Int) {
            stopping.store(true, ordering: .sequentiallyConsistent)
            start({ _ in }, workers: workers)
        }

        func workerLoop(index: Int) {
            // Workers are created before any job, at generation 0; reading the counter here
            // instead could miss a job started before this thread got going.
            var seen = 0
            while true {
                var spins = 0
                var current = generation.load(ordering: .acquiring)
                while current == seen && spins < Self.spinLimit {
                    if spins < Self.yieldAfter { ember_cpu_relax() } else { sched_yield() }
                    spins += 1
                    current = generation.load(ordering: .acquiring)
                }
                if current == seen {
                    condition.lock()
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    while generation.load(ordering: .sequentiallyConsistent) == seen { condition.wait() }
                    sleepers.subtract(1, ordering: .sequentiallyConsistent)
                    condition.unlock()
                    current = generation.load(ordering: .acquiring)
                }
                seen = current
                if stopping.load(ordering: .acquiring) { return }
                job!(index)
                pending.subtract(1, ordering: .releasing)
            }
        }
    }
}
