/// Keys and values of every past position, per layer, in float.
/// Layout per layer: position-major, `kvLength` floats per position (all kv heads side by side).
public final class KVCache: @unchecked Sendable {
    public let layerCount: Int
    public let capacity: Int
    public let keyLength: Int
    public let valueLength: Int
    /// Positions filled so far; the next token goes to position `count`.
    public internal(set) var count = 0
    private let keys: [UnsafeMutablePointer<Float>]
    private let values: [UnsafeMutablePointer<Float>]

    public init(config: ModelConfig, capacity: Int) {
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

    /// Forgets everything (a new sequence starts at position 0).
    public func clear() { count = 0 }

    /// Forgets positions from `position` on (for resuming a conversation from a common prefix).
    public func truncate(to position: Int) { count = min(count, max(0, position)) }

    @inline(__always)
    public func key(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { keys[layer] + position * keyLength }

    @inline(__always)
    public func value(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { values[layer] + position * valueLength }

    public var byteCount: Int { layerCount * capacity * (keyLength + valueLength) * 4 }
}
