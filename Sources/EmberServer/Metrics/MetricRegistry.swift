import Synchronization

// Counters, gauges and fixed-bucket histograms, written in the Prometheus text exposition
// format (version 0.0.4): per family a `# HELP` and a `# TYPE` line, then one line per sample.
// Each metric keeps its values behind its own Mutex; a scrape reads them one family at a time.

/// Metric and label names as Prometheus accepts them.
enum MetricName {
    static func isValidMetric(_ name: String) -> Bool {
        isValid(name, allowingColon: true)
    }

    static func isValidLabel(_ name: String) -> Bool {
        isValid(name, allowingColon: false) && !name.hasPrefix("__")
    }

    private static func isValid(_ name: String, allowingColon: Bool) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "_"
                || (allowingColon && scalar == ":"))
        }
    }
}

/// Values as the format writes them: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
func formatMetricValue(_ value: Double) -> String {
    if value.isNaN { return "NaN" }
    if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
    if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
    return "\(value)"
}

/// A label set written `{a="x",b="y"}` with `\`, `"` and newlines escaped; empty when none.
func formatLabels(_ labels: [(String, String)]) -> String {
    guard !labels.isEmpty else { return "" }
    let escaped = labels.map { name, value in
        var text = ""
        for character in value {
            switch character {
            case "\\": text += "\\\\"
            case "\"": text += "\\\""
            case "\n": text += "\\n"
            default: text.append(character)
            }
        }
        return "\(name)=\"\(text)\""
    }
    return "{" + escaped.joined(separator: ",") + "}"
}

/// A family of metrics under one name.
protocol MetricFamily: Sendable {
    var name: String { get }
    var help: String { get }
    var type: String { get }
    /// Sample lines, each labelled with `constantLabels` first.
    func sampleLines(constantLabels: [(String, String)]) -> [String]
}

/// A value that only goes up, one per combination of label values.
public final class Counter: MetricFamily {
    let name: String
    let help: String
    let type = "counter"
    let labelNames: [String]
    /// Values by label values, and the label values in the order first seen.
    private let state = Mutex<(values: [[String]: Double], order: [[String]])>(([:], []))

    init(name: String, help: String, labelNames: [String]) {
        self.name = name
        self.help = help
        self.labelNames = labelNames
        if labelNames.isEmpty { increment(by: 0) }  // an unlabelled counter shows 0 before its first event
    }

    public func increment(by amount: Double = 1, labels: [String] = []) {
        precondition(labels.count == labelNames.count && amount >= 0, "counter \(name): wrong labels or a negative step")
        state.withLock { state in
            if state.values[labels] == nil { state.order.append(labels) }
            state.values[labels, default: 0] += amount
        }
    }

    public func value(labels: [String] = []) -> Double { state.withLock { $0.values[labels] ?? 0 } }

    func sampleLines(constantLabels: [(String, String)]) -> [String] {
        let (values, order) = state.withLock { ($0.values, $0.order) }
        return order.map { labels in
            name + formatLabels(constantLabels + Array(zip(labelNames, labels))) + " " + formatMetricValue(values[labels] ?? 0)
        }
    }
}

/// A value that goes up and down: set by the server, or read from a closure at each scrape.
public final class Gauge: MetricFamily {
    let name: String
    let help: String
    let type = "gauge"
    private let stored = Mutex(0.0)
    private let read: (@Sendable () -> Double)?

    init(name: String, help: String, read: (@Sendable () -> Double)?) {
        self.name = name
        self.help = help
        self.read = read
    }

    public func set(_ value: Double) { stored.withLock { $0 = value } }
    public func add(_ amount: Double) { stored.withLock { $0 += amount } }
    public var value: Double { read?() ?? stored.withLock { $0 } }

    func sampleLines(constantLabels: [(String, String)]) -> [String] {
        [name + formatLabels(constantLabels) + " " + formatMetricValue(value)]
    }
}

/// Observations counted into fixed buckets (each bucket counts the observations ≤ its bound),
/// with their sum and count.
public final class Histogram: MetricFamily {
    let name: String
    let help: String
    let type = "histogram"
    /// Ascending finite upper bounds; `+Inf` is implied.
    let bounds: [Double]
    private let state: Mutex<State>

    private struct State {
        var bucketCounts: [Int]  // per bucket, not cumulative; the last one is +Inf
        var sum = 0.0
        var count = 0
    }

    init(name: String, help: String, bounds: [Double]) {
        precondition(!bounds.isEmpty && zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 } && bounds.allSatisfy(\.isFinite),
                     "histogram \(name): bounds must be finite and ascending")
        self.name = name
        self.help = help
        self.bounds = bounds
        state = Mutex(State(bucketCounts: Array(repeating: 0, count: bounds.count + 1)))
    }

    public func observe(_ value: Double) {
        let bucket = bounds.firstIndex { value <= $0 } ?? bounds.count
        state.withLock { state in
            state.bucketCounts[bucket] += 1
            state.sum += value
            state.count += 1
        }
    }

    public var count: Int { state.withLock { $0.count } }

    func sampleLines(constantLabels: [(String, String)]) -> [String] {
        let snapshot = state.withLock { $0 }
        var lines: [String] = []
        var cumulative = 0
        for (index, bucketCount) in snapshot.bucketCounts.enumerated() {
            cumulative += bucketCount
            let bound = index < bounds.count ? formatMetricValue(bounds[index]) : "+Inf"
            lines.append("\(name)_bucket\(formatLabels(constantLabels + [("le", bound)])) \(cumulative)")
        }
        lines.append("\(name)_sum\(formatLabels(constantLabels)) \(formatMetricValue(snapshot.sum))")
        lines.append("\(name)_count\(formatLabels(constantLabels)) \(snapshot.count)")
        return lines
    }
}

/// The metrics of a server in the order they were made, with labels every sample carries.
public final class MetricRegistry: Sendable {
    private let families = Mutex<[any MetricFamily]>([])
    private let constantLabels: [(String, String)]

    public init(constantLabels: [(String, String)] = []) {
        precondition(constantLabels.allSatisfy { MetricName.isValidLabel($0.0) }, "bad constant label name")
        self.constantLabels = constantLabels
    }

    public func counter(_ name: String, help: String, labelNames: [String] = []) -> Counter {
        precondition(labelNames.allSatisfy(MetricName.isValidLabel), "bad label name for \(name)")
        return register(Counter(name: name, help: help, labelNames: labelNames))
    }

    public func gauge(_ name: String, help: String) -> Gauge {
        register(Gauge(name: name, help: help, read: nil))
    }

    /// A gauge whose value is read from `read` at each scrape.
    @discardableResult
    public func gauge(_ name: String, help: String, read: @escaping @Sendable () -> Double) -> Gauge {
        register(Gauge(name: name, help: help, read: read))
    }

    public func histogram(_ name: String, help: String, bounds: [Double]) -> Histogram {
        register(Histogram(name: name, help: help, bounds: bounds))
    }

    private func register<Family: MetricFamily>(_ family: Family) -> Family {
        precondition(MetricName.isValidMetric(family.name), "bad metric name \(family.name)")
        families.withLock { families in
            precondition(!families.contains { $0.name == family.name }, "metric \(family.name) registered twice")
            families.append(family)
        }
        return family
    }

    /// The exposition text (served as `text/plain; version=0.0.4`).
    public func render() -> String {
        var text = ""
        for family in families.withLock({ $0 }) {
            let help = family.help.replacingBackslashesAndNewlines()
            text += "# HELP \(family.name) \(help)\n# TYPE \(family.name) \(family.type)\n"
            for line in family.sampleLines(constantLabels: constantLabels) { text += line + "\n" }
        }
        return text
    }
}

private extension String {
    /// HELP text escapes only `\` and newlines.
    func replacingBackslashesAndNewlines() -> String {
        var text = ""
        for character in self {
            switch character {
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            default: text.append(character)
            }
        }
        return text
    }
}
