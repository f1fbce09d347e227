import CEmberKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Keys and values of every past position, per layer, as rows of `type` (F32, F16 or Q8_0).
/// Layout per layer: position-major, one row of `keyLength` (`valueLength`) elements per
/// position, all kv heads side by side: the layout the attention kernel reads.
final class KVCache {
    let layerCount: Int
    let capacity: Int
    let keyLength: Int
    let valueLength: Int
    let type: KVCacheType
    /// Bytes of one position's keys (values) in `type`.
    let keyRowBytes: Int
    let valueRowBytes: Int
    /// Positions filled so far; the next token goes to position `count`.
    var count = 0
    private let keys: [UnsafeMutableRawPointer]
    private let values: [UnsafeMutableRawPointer]

    /// A cache of `type`, which must hold the model's rows (`check(_:type:)`).
    init(config: ModelConfig, capacity: Int, type: KVCacheType) {
        guard let keyBytes = type.rowBytes(elements: config.kvLength), let valueBytes = type.rowBytes(elements: config.valueLength) else {
            preconditionFailure("KVCache: a \(type.rawValue) cache cannot hold this model's rows (check(_:type:) first)")
        }
        layerCount = config.layerCount
        self.capacity = capacity
        self.type = type
        keyLength = config.kvLength
        valueLength = config.valueLength
        keyRowBytes = keyBytes
        valueRowBytes = valueBytes
        keys = (0..<config.layerCount).map { _ in Self.mapZeroPages(capacity * keyBytes) }
        values = (0..<config.layerCount).map { _ in Self.mapZeroPages(capacity * valueBytes) }
    }

    deinit {
        keys.forEach { munmap($0, max(capacity * keyRowBytes, 1)) }
        values.forEach { munmap($0, max(capacity * valueRowBytes, 1)) }
    }

    /// Fresh pages of its own, not heap memory: only the positions written become resident,
    /// whatever the process freed before (a reused heap block may already be resident), and
    /// the memory goes back to the system when the cache goes. Sizes were checked by callers
    /// (`byteCount`), so a failed mapping is out of memory.
    private static func mapZeroPages(_ byteCount: Int) -> UnsafeMutableRawPointer {
        let address = mmap(nil, max(byteCount, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let address, address != MAP_FAILED else {
            fatalError("KVCache: cannot map \(byteCount) bytes: " + String(cString: strerror(errno)))
        }
        return address
    }

    /// Throws unless a cache of `type` can hold `config`'s rows and its attention runs over it
    /// (Q8_0 needs head and value sizes that are multiples of 32).
    static func check(_ config: ModelConfig, type: KVCacheType) throws {
        try attentionShape(config, scale: 1).validate(cacheType: type)
    }

    /// The attention kernel's view of `config`'s heads, scores scaled by `scale`.
    static func attentionShape(_ config: ModelConfig, scale: Float) -> AttentionShape {
        AttentionShape(headCount: config.headCount, kvHeadCount: config.kvHeadCount, headDimension: config.headDimension,
                       valueDimension: config.valueDimension, scale: scale)
    }

    /// Bytes a cache of `capacity` positions of `type` takes, or nil when that overflows (or the
    /// type cannot hold the rows).
    static func byteCount(_ config: ModelConfig, capacity: Int, type: KVCacheType) -> Int? {
        guard let keyBytes = type.rowBytes(elements: config.kvLength), let valueBytes = type.rowBytes(elements: config.valueLength) else {
            return nil
        }
        let (perLayer, o1) = (keyBytes + valueBytes).multipliedReportingOverflow(by: capacity)
        let (all, o2) = perLayer.multipliedReportingOverflow(by: config.layerCount)
        return o1 || o2 ? nil : all
    }

    /// Forgets positions from `position` on (0: a new sequence).
    func truncate(to position: Int) { count = min(count, max(0, position)) }

    /// Stores `keyLength` floats as the keys of `position` in `layer` (rounded to `type`).
    @inline(__always)
    func storeKey(_ x: UnsafePointer<Float>, layer: Int, position: Int) {
        type.store(x, count: keyLength, into: keys[layer] + position * keyRowBytes)
    }

    /// Stores `valueLength` floats as the values of `position` in `layer`.
    @inline(__always)
    func storeValue(_ x: UnsafePointer<Float>, layer: Int, position: Int) {
        type.store(x, count: valueLength, into: values[layer] + position * valueRowBytes)
    }

    /// The keys of `positions` in `layer` as floats (as attention reads them), `keyLength` per
    /// position, into `output`.
    func loadKeys(layer: Int, positions: Range<Int>, into output: UnsafeMutablePointer<Float>) {
        for (i, p) in positions.enumerated() {
            ember_dequantize_row(Int32(type.tensorType.rawValue), keys[layer] + p * keyRowBytes, output + i * keyLength, Int64(keyLength))
        }
    }

    /// The values of `positions` in `layer` as floats, `valueLength` per position.
    func loadValues(layer: Int, positions: Range<Int>, into output: UnsafeMutablePointer<Float>) {
        for (i, p) in positions.enumerated() {
            ember_dequantize_row(Int32(type.tensorType.rawValue), values[layer] + p * valueRowBytes, output + i * valueLength,
                                 Int64(valueLength))
        }
    }

    /// `layer` as the attention kernel reads it.
    func attentionView(layer: Int) -> AttentionCacheView {
        AttentionCacheView(type: type, keys: keys[layer], values: values[layer], keyStride: keyRowBytes, valueStride: valueRowBytes)
    }

    var byteCount: Int { layerCount * capacity * (keyRowBytes + valueRowBytes) }
}
