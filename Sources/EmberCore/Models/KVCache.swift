/// Keys and values of every past position, per layer, in float.
/// Layout per layer: position-major, `keyLength` (`valueLength`) floats per position, all kv
/// heads side by side.
final class KVCache {
    let layerCount: Int
    let capacity: Int
    let keyLength: Int
    let valueLength: Int
    /// Positions filled so far; the next token goes to position `count`.
    var count = 0
    private let keys: [UnsafeMutablePointer<Float>]
    private let values: [UnsafeMutablePointer<Float>]

    init(config: ModelConfig, capacity: Int) {
        layerCount = config.layerCount
        self.capacity = capacity
        keyLength = config.kvLength
        valueLength = config.valueLength
        keys = (0..<config.layerCount).map { _ in .allocate(capacity: capacity * config.kvLength) }
        values = (0..<config.layerCount).map { _ in .allocate(capacity: capacity * config.valueLength) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Bytes a cache of `capacity` positions takes, or nil when that overflows.
    static func byteCount(_ config: ModelConfig, capacity: Int) -> Int? {
        let perPosition = (config.kvLength + config.valueLength) * MemoryLayout<Float>.size
        let (perLayer, o1) = perPosition.multipliedReportingOverflow(by: capacity)
        let (all, o2) = perLayer.multipliedReportingOverflow(by: config.layerCount)
        return o1 || o2 ? nil : all
    }

    /// Forgets positions from `position` on (0: a new sequence).
    func truncate(to position: Int) { count = min(count, max(0, position)) }

    @inline(__always)
    func key(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { keys[layer] + position * keyLength }

    @inline(__always)
    func value(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { values[layer] + position * valueLength }

    var byteCount: Int { layerCount * capacity * (keyLength + valueLength) * 4 }
}
