/// One layer's FFN neurons as the solver sees them: groups in the order the device takes them
/// (hottest neurons first), each with its bytes and its activation mass (the summed firing
/// frequencies of its neurons, i.e. the activated-neuron work per token it would serve).
public struct NeuronGroups: Sendable, Equatable {
    public var bytes: [Int]
    public var mass: [Double]

    public init(bytes: [Int], mass: [Double]) {
        precondition(bytes.count == mass.count, "one byte count and one mass per group")
        self.bytes = bytes
        self.mass = mass
    }

    public var count: Int { bytes.count }
}

/// How many groups each layer puts on the device.
public struct GroupAssignment: Sendable, Equatable {
    /// Per layer, the number of leading groups on the device.
    public var groups: [Int]
    public var bytes: Int
    public var mass: Double
    /// False when the capacity had to be rounded to keep the table small (see `PlacementSolver`):
    /// the assignment then still fits the budget but may fall short of the best one.
    public var exact: Bool
    /// Bytes per unit of capacity in the dynamic programme (0 when everything fitted and no
    /// programme ran), and the capacity in those units.
    public var quantum: Int
    public var capacityUnits: Int

    public init(groups: [Int], bytes: Int, mass: Double, exact: Bool, quantum: Int, capacityUnits: Int) {
        self.groups = groups
        self.bytes = bytes
        self.mass = mass
        self.exact = exact
        self.quantum = quantum
        self.capacityUnits = capacityUnits
    }
}

/// Chooses how many groups of each layer the device holds: the largest total mass whose bytes
/// fit the budget, where each layer gives either 0 groups or at least `minimumGroups` of them
/// (fewer only when the layer has fewer groups than that: then all or none).
///
/// Within a layer groups are taken hottest first, so a layer's choice is a count k and its value
/// the prefix sum of masses, which is concave in k. Without a minimum a greedy merge of the
/// layers' groups by mass per byte would almost do; the minimum makes the choice non-convex (a
/// layer's first `minimumGroups` groups come together or not at all), and partial last groups
/// make costs unequal, so the solver is a dynamic programme over layers × capacity:
///
///     best_l(c) = max( best_{l-1}(c),  max over allowed k ≥ 1 with cost_l(k) ≤ c of
///                      best_{l-1}(c − cost_l(k)) + mass_l(k) )
///
/// It is exact when every group's byte count is a whole number of capacity units, so the unit is
/// the greatest common divisor of all group sizes: one group for the usual shape (equal layers,
/// the FFN length a multiple of the granularity), one neuron's bytes when last groups are
/// partial, less when layers store neurons in different types. The table then has capacity
/// C = min(budget, total FFN bytes) ÷ unit columns (a 7B shape at granularity 32: 32 × 11008
/// cells, at most 344 counts each, about 121 M steps, a fraction of a second). When the exact
/// unit would make the table or the work too large, the unit is enlarged and each prefix's cost
/// rounded *up* to whole units (at most one unit lost per layer): the answer still fits the
/// budget, is optimal for the rounded costs, and is marked inexact.
public enum PlacementSolver {
    /// Work and table size above which the capacity is coarsened (about a second of work here, 64 MB).
    public static let defaultMaximumSteps = 600_000_000
    public static let defaultMaximumCells = 1 << 24

    public static func solve(_ layers: [NeuronGroups], budget: Int, minimumGroups: Int = 0,
                             maximumSteps: Int = defaultMaximumSteps, maximumCells: Int = defaultMaximumCells) -> GroupAssignment {
        curve(layers, budget: budget, minimumGroups: minimumGroups, maximumSteps: maximumSteps, maximumCells: maximumCells)
            .assignment(within: budget)
    }

    /// The best assignment for every capacity up to `budget` at once: the programme's last row
    /// holds the best mass within each capacity, and its choices rebuild the assignment for any
    /// of them. Placement uses it to weigh each split of the budget between dense blocks and
    /// neurons without solving again.
    static func curve(_ layers: [NeuronGroups], budget: Int, minimumGroups: Int = 0,
                      maximumSteps: Int = defaultMaximumSteps, maximumCells: Int = defaultMaximumCells) -> Curve {
        let budget = max(budget, 0)
        let totalBytes = layers.reduce(0) { $0 + $1.bytes.reduce(0, +) }
        var quantum = layers.lazy.flatMap(\.bytes).filter { $0 > 0 }.reduce(0, greatestCommonDivisor)
        // Nothing to place: no programme to run. (When everything fits the budget, the
        // programme still answers for the smaller capacities a caller may ask about.)
        guard quantum > 0 else {
            return Curve(layers: layers, totalBytes: totalBytes, quantum: 0, width: 1, exact: true, best: [0], choice: [])
        }
        func capacity(_ quantum: Int) -> Int { min(budget, totalBytes) / quantum }
        // An upper bound on the inner steps: per layer and capacity, one step per distinct cost.
        func steps(_ quantum: Int) -> Int {
            let width = capacity(quantum) + 1
            return layers.reduce(0) { $0 + width * (min($1.count, width) + 1) }
        }
        var exact = true
        while capacity(quantum) > 0, steps(quantum) > maximumSteps || layers.count * (capacity(quantum) + 1) > maximumCells {
            exact = false
            quantum += max(1, quantum / 4)
        }
        let width = capacity(quantum) + 1

        // Per layer, the counts worth trying: for each cost in units within the capacity, the
        // allowed count of that cost with the most mass (with an exact unit every count has its
        // own cost; coarsened, neighbours share one).
        struct Options {
            var units: [Int] = []
            var mass: [Double] = []
            var counts: [Int32] = []
        }
        let options: [Options] = layers.map { layer in
            var options = Options()
            let first = max(1, min(minimumGroups, layer.count))  // smallest non-zero count allowed
            var bytes = 0, mass = 0.0
            for k in stride(from: 1, through: layer.count, by: 1) {
                bytes += layer.bytes[k - 1]
                mass += layer.mass[k - 1]
                let units = (bytes + quantum - 1) / quantum
                guard k >= first else { continue }
                guard units < width else { break }  // costs only grow with k
                if options.units.last == units {
                    if mass > options.mass[options.mass.count - 1] {  // ties keep the fewer groups
                        options.mass[options.mass.count - 1] = mass
                        options.counts[options.counts.count - 1] = Int32(k)
                    }
                } else {
                    options.units.append(units)
                    options.mass.append(mass)
                    options.counts.append(Int32(k))
                }
            }
            return options
        }

        var best = [Double](repeating: 0, count: width)  // best mass of the layers so far within c units
        var next = best
        var choice = [Int32](repeating: 0, count: layers.count * width)  // count chosen per layer and capacity
        for l in layers.indices {
            let row = l * width
            options[l].units.withUnsafeBufferPointer { units in
                options[l].mass.withUnsafeBufferPointer { mass in
                    options[l].counts.withUnsafeBufferPointer { counts in
                        best.withUnsafeBufferPointer { best in
                            next.withUnsafeMutableBufferPointer { next in
                                choice.withUnsafeMutableBufferPointer { choice in
                                    for c in 0..<width {
                                        var value = best[c], chosen: Int32 = 0
                                        var o = 0
                                        while o < units.count, units[o] <= c {
                                            let candidate = best[c - units[o]] + mass[o]
                                            if candidate > value {  // ties keep the fewer groups
                                                value = candidate
                                                chosen = counts[o]
                                            }
                                            o += 1
                                        }
                                        next[c] = value
                                        choice[row + c] = chosen
                                    }
                                }
                            }
                        }
                    }
                }
            }
            swap(&best, &next)
        }
        return Curve(layers: layers, totalBytes: totalBytes, quantum: quantum, width: width, exact: exact, best: best, choice: choice)
    }

    /// The programme's result: the best mass and assignment within any capacity up to its budget.
    struct Curve {
        let layers: [NeuronGroups]
        let totalBytes: Int
        /// Bytes per capacity unit; 0 when no programme ran (everything fitted the budget).
        let quantum: Int
        let width: Int
        let exact: Bool
        let best: [Double]
        let choice: [Int32]

        /// The units of capacity that `bytes` buys (rounded down: the assignment must fit).
        private func units(_ bytes: Int) -> Int { min(width - 1, max(0, bytes) / quantum) }

        /// The best total mass of groups within `bytes`.
        func mass(within bytes: Int) -> Double {
            if bytes >= totalBytes { return layers.reduce(0) { $0 + $1.mass.reduce(0, +) } }
            return quantum == 0 ? 0 : best[units(bytes)]
        }

        /// The assignment of the best mass within `bytes`.
        func assignment(within bytes: Int) -> GroupAssignment {
            if bytes >= totalBytes { return make(layers.map(\.count), quantum: 0, units: 0) }
            guard quantum > 0 else { return make(layers.map { _ in 0 }, quantum: 0, units: 0) }
            var groups = [Int](repeating: 0, count: layers.count)
            var c = units(bytes)
            let capacity = c
            for l in layers.indices.reversed() {
                let k = Int(choice[l * width + c])
                groups[l] = k
                c -= (layers[l].bytes[..<k].reduce(0, +) + quantum - 1) / quantum
            }
            return make(groups, quantum: quantum, units: capacity)
        }

        private func make(_ groups: [Int], quantum: Int, units: Int) -> GroupAssignment {
            var bytes = 0, mass = 0.0
            for (layer, k) in zip(layers, groups) {
                bytes += layer.bytes[..<k].reduce(0, +)
                mass += layer.mass[..<k].reduce(0, +)
            }
            return GroupAssignment(groups: groups, bytes: bytes, mass: mass, exact: exact, quantum: quantum, capacityUnits: units)
        }
    }

    static func greatestCommonDivisor(_ a: Int, _ b: Int) -> Int {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }
}
