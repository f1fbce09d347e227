import CEmberKernels

// Causal attention of a batch of query rows over one layer's KV cache (ember_attention.h),
// with the work split over a thread pool. The C kernel takes one kv head and a range of rows
// (or, for one row, a range of keys); this file decides those ranges. ForwardPass calls it
// once per sequence's rows of a batch, over that sequence's KVCache.

/// How the KV cache stores keys and values. F16 is what llama.cpp keeps by default.
public enum KVCacheType: String, Sendable, CaseIterable {
    case f32, f16, q8_0

    var tensorType: TensorType {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .q8_0: return .q8_0
        }
    }

    /// Bytes of one cache row of `elements` elements; nil when the type cannot hold such a row
    /// (Q8_0 stores blocks of 32).
    func rowBytes(elements: Int) -> Int? {
        let bytes = ember_kv_row_bytes(Int32(tensorType.rawValue), Int64(elements))
        return bytes > 0 ? bytes : nil
    }

    /// Stores `count` floats as one cache row at `destination` (`rowBytes(elements: count)`
    /// bytes): F16 rounds to nearest even, Q8_0 quantizes each block of 32 to scale max|x|/127.
    @inline(__always)
    func store(_ x: UnsafePointer<Float>, count: Int, into destination: UnsafeMutableRawPointer) {
        let status = ember_kv_store(Int32(tensorType.rawValue), x, destination, Int64(count))
        precondition(status == 0, "KVCacheType.store: \(count) elements do not fit a \(rawValue) row")
    }
}

/// One layer's cached keys and values as the attention kernel reads them: position p's keys
/// (all kv heads side by side) are one row of `type` at `keys + p * keyStride`, its values at
/// `values + p * valueStride`.
struct AttentionCacheView {
    var type: KVCacheType
    var keys: UnsafeRawPointer
    var values: UnsafeRawPointer
    var keyStride: Int
    var valueStride: Int

    init(type: KVCacheType, keys: UnsafeRawPointer, values: UnsafeRawPointer, keyStride: Int, valueStride: Int) {
        self.type = type
        self.keys = keys
        self.values = values
        self.keyStride = keyStride
        self.valueStride = valueStride
    }
}

enum AttentionError: Error, CustomStringConvertible {
    case unsupportedCache(type: KVCacheType, headDimension: Int, valueDimension: Int)
    case badShape(String)

    var description: String {
        switch self {
        case let .unsupportedCache(type, headDimension, valueDimension):
            return "a \(type.rawValue) KV cache needs head and value sizes that are multiples of 32 "
                + "(this model has \(headDimension) and \(valueDimension)); choose f16 or f32"
        case let .badShape(what):
            return "attention shape: \(what)"
        }
    }
}

/// A model's attention heads: query heads `h` share kv head `h / (headCount / kvHeadCount)`.
struct AttentionShape: Sendable, Equatable {
    var headCount: Int
    var kvHeadCount: Int
    var headDimension: Int
    var valueDimension: Int
    /// Scores are scale · q·k.
    var scale: Float

    init(headCount: Int, kvHeadCount: Int, headDimension: Int, valueDimension: Int, scale: Float) {
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDimension = headDimension
        self.valueDimension = valueDimension
        self.scale = scale
    }

    var groupSize: Int { headCount / kvHeadCount }

    /// Throws unless the kernels can run this shape over a cache of `cacheType`.
    func validate(cacheType: KVCacheType) throws {
        guard kvHeadCount > 0, headCount % kvHeadCount == 0, headDimension > 0, valueDimension > 0 else {
            throw AttentionError.badShape("\(headCount) heads, \(kvHeadCount) kv heads, sizes \(headDimension)/\(valueDimension)")
        }
        guard cacheType.rowBytes(elements: headDimension) != nil, cacheType.rowBytes(elements: valueDimension) != nil else {
            throw AttentionError.unsupportedCache(type: cacheType, headDimension: headDimension, valueDimension: valueDimension)
        }
    }

    /// The C kernel's view of this shape; pointers are filled in per call.
    fileprivate func arguments(cache: AttentionCacheView?) -> ember_attention_args {
        var a = ember_attention_args()
        a.cache_type = Int32((cache?.type ?? .f32).tensorType.rawValue)
        a.head_count = Int64(headCount)
        a.kv_head_count = Int64(kvHeadCount)
        a.head_dim = Int64(headDimension)
        a.value_dim = Int64(valueDimension)
        a.scale = scale
        if let cache {
            a.keys = cache.keys
            a.values = cache.values
            a.key_stride = cache.keyStride
            a.value_stride = cache.valueStride
        }
        return a
    }
}

/// Scratch for `AttentionKernel.run`: one kernel scratch per thread, and the partials of a split
/// decode. Make one per (pool, shape); not for concurrent calls.
final class AttentionWorkspace: @unchecked Sendable {
    let shape: AttentionShape
    let threadCount: Int
    fileprivate let scratch: [UnsafeMutableRawPointer]
    /// Room for the key-split partials of `partialRows` rows (grown by `partials(rows:)`).
    private var partialStorage: UnsafeMutablePointer<Float>
    private var partialRows = 1
    /// Floats of one row's partials: every kv head's chunks, a value and two statistics per head.
    fileprivate let rowPartials: Int

    init(shape: AttentionShape, threads: Int) {
        self.shape = shape
        threadCount = max(1, threads)
        var a = shape.arguments(cache: nil)
        let bytes = max(64, ember_attention_scratch_bytes(&a))
        scratch = (0..<threadCount).map { _ in .allocate(byteCount: bytes, alignment: 64) }
        rowPartials = AttentionKernel.maxChunks * shape.headCount * (shape.valueDimension + 2)
        partialStorage = .allocate(capacity: rowPartials)
    }

    /// Partials for `rows` rows, row r's at `r * rowPartials` (one caller at a time: the
    /// workspace belongs to one forward pass).
    fileprivate func partials(rows: Int) -> UnsafeMutablePointer<Float> {
        if rows > partialRows {
            partialStorage.deallocate()
            partialStorage = .allocate(capacity: rows * rowPartials)
            partialRows = rows
        }
        return partialStorage
    }

    /// Whether this workspace fits calls of `other` (the scale does not change the scratch).
    func serves(_ other: AttentionShape) -> Bool {
        var same = other
        same.scale = shape.scale
        return same == shape
    }

    deinit {
        scratch.forEach { $0.deallocate() }
        partialStorage.deallocate()
    }
}

enum AttentionKernel {
    /// Rows per work item of a batch: several items per kv head keep threads busy, and 16
    /// rows x a kv group's heads fill most of a kernel block (48 query vectors).
    static let rowsPerItem = 16
    /// A single row's keys are split into at most this many chunks per kv head (plus one when
    /// a sliding window starts mid-chunk): enough items for the threads, few partials to merge.
    static let maxChunks = 17

    /// Causal attention of query rows `0..<positions.count` (row t at position positions[t],
    /// seeing keys from max(0, positions[t] − window + 1), or 0 without a window, to
    /// positions[t], all already stored) over `cache`: output row t, head h at
    /// `output + t * outputStride + h * valueDimension`; query row t, head h at
    /// `queries + t * queryStride + h * headDimension`.
    ///
    /// A single row splits its keys over the threads (then merges the partials) when
    /// `splitsKeys` is true or nil; rows otherwise run in blocks of rows. The two round
    /// differently, but each gives a row the same bits whatever other rows share the call or
    /// the thread count: the split over threads depends only on the rows and positions, and a
    /// row's result is the same however rows are split (see ember_attention.h).
    static func run(pool: ThreadPool, shape: AttentionShape, cache: AttentionCacheView,
                    queries: UnsafePointer<Float>, queryStride: Int, positions: [Int], window: Int?,
                    output: UnsafeMutablePointer<Float>, outputStride: Int, workspace: AttentionWorkspace,
                    splitsKeys: Bool? = nil) {
        precondition(workspace.serves(shape) && workspace.threadCount >= pool.threadCount,
                     "AttentionKernel.run: workspace made for another shape or fewer threads")
        precondition(splitsKeys != true || positions.count == 1, "AttentionKernel.run: only a single row splits its keys")
        guard !positions.isEmpty else { return }
        var args = shape.arguments(cache: cache)
        args.queries = queries
        args.query_stride = Int64(queryStride)
        args.out = output
        args.out_stride = Int64(outputStride)
        args.window = Int64(window ?? 0)
        precondition(ember_attention_check(&args) == 0, "AttentionKernel.run: \(cache.type) cache cannot hold this shape")
        positions.withUnsafeBufferPointer { raw in
            raw.withMemoryRebound(to: Int64.self) { rebound in
                args.positions = rebound.baseAddress
                if positions.count == 1, splitsKeys ?? true {
                    decode(pool: pool, rows: [args], window: window, workspace: workspace)
                } else {
                    batch(pool: pool, args: args, positions: positions, window: window, workspace: workspace)
                }
            }
        }
    }

    /// Keys row `position` sees.
    static func keys(position: Int, window: Int?) -> Range<Int> {
        (window.map { max(0, position - $0 + 1) } ?? 0)..<(position + 1)
    }

    /// Items (kv head, block of rowsPerItem rows), kv-head-major, handed out as contiguous
    /// runs balanced by the number of keys they cover.
    private static func batch(pool: ThreadPool, args: ember_attention_args, positions: [Int], window: Int?,
                              workspace: AttentionWorkspace) {
        let rows = positions.count, kvHeads = Int(args.kv_head_count)
        let blocks = (rows + rowsPerItem - 1) / rowsPerItem
        let blockCost = (0..<blocks).map { b in
            positions[(b * rowsPerItem)..<min(rows, (b + 1) * rowsPerItem)].reduce(0) { $0 + keys(position: $1, window: window).count }
        }
        let items = kvHeads * blocks, total = max(1, blockCost.reduce(0, +) * kvHeads)
        let threads = pool.threadCount
        // An item goes to the thread in whose share of the total cost its middle falls; owners
        // never decrease along the items, so thread t runs items firstItem[t]..<firstItem[t + 1].
        var firstItem = [Int](repeating: items, count: threads + 1)
        var before = 0, next = 0
        for item in 0..<items {
            let cost = blockCost[item % blocks]
            let owner = min(threads - 1, (2 * before + cost) * threads / (2 * total))
            while next <= owner { firstItem[next] = item; next += 1 }
            before += cost
        }
        pool.run { thread in
            var a = args
            for item in firstItem[thread]..<firstItem[thread + 1] {
                let g = item / blocks, t0 = item % blocks * rowsPerItem
                ember_attention(&a, Int64(g), Int64(t0), Int64(min(rows, t0 + rowsPerItem)), workspace.scratch[thread])
            }
        }
    }

    /// One decode row of a batch of sequences: its sequence's cache, its query, its position
    /// and where its output goes.
    struct DecodeRow {
        var cache: AttentionCacheView
        var query: UnsafePointer<Float>
        var position: Int
        var output: UnsafeMutablePointer<Float>
    }

    /// Single rows, each over its own cache, each splitting its keys (what a sequence alone
    /// does for a one-row step), all in two runs of the pool rather than two per row.
    static func decode(pool: ThreadPool, shape: AttentionShape, rows: [DecodeRow], window: Int?,
                       workspace: AttentionWorkspace) {
        precondition(workspace.serves(shape) && workspace.threadCount >= pool.threadCount,
                     "AttentionKernel.decode: workspace made for another shape or fewer threads")
        guard !rows.isEmpty else { return }
        let positions = UnsafeMutablePointer<Int64>.allocate(capacity: rows.count)
        defer { positions.deallocate() }
        let args = rows.enumerated().map { r, row in
            positions[r] = Int64(row.position)
            var a = shape.arguments(cache: row.cache)
            a.queries = row.query
            a.out = row.output
            a.window = Int64(window ?? 0)
            a.positions = UnsafePointer(positions + r)
            precondition(ember_attention_check(&a) == 0, "AttentionKernel.decode: \(row.cache.type) cache cannot hold this shape")
            return a
        }
        decode(pool: pool, rows: args, window: window, workspace: workspace)
    }

    /// Rows, each with its own arguments (row 0 of each): every row's (kv head, chunk of keys)
    /// items shared evenly over the threads, then every row's heads merged. Chunks are 64·k keys
    /// at multiples of their size, k chosen from the row's key count alone, and each item and
    /// merge is computed whole by one thread: a row gets the same bits whatever rows share the
    /// call and however many threads run it.
    private static func decode(pool: ThreadPool, rows: [ember_attention_args], window: Int?,
                               workspace: AttentionWorkspace) {
        struct Split { var firstChunk: Int, chunk: Int, chunks: Int, firstItem: Int }
        let block = Int(EMBER_ATTENTION_KEY_BLOCK)
        let kvHeads = Int(rows[0].kv_head_count), heads = Int(rows[0].head_count), group = heads / kvHeads
        let floats = Int(rows[0].value_dim) + 2
        var splits: [Split] = [], items = 0
        for a in rows {
            let seen = keys(position: Int(a.positions[0]), window: window)
            let chunk = block * ((seen.count + (maxChunks - 1) * block - 1) / ((maxChunks - 1) * block))
            let firstChunk = seen.lowerBound / chunk, chunks = (seen.upperBound - 1) / chunk - firstChunk + 1
            splits.append(Split(firstChunk: firstChunk, chunk: chunk, chunks: chunks, firstItem: items))
            items += kvHeads * chunks
        }
        let partials = workspace.partials(rows: rows.count), rowPartials = workspace.rowPartials
        pool.run { thread in
            var r = 0
            for item in ThreadPool.share(of: items, thread: thread, threads: pool.threadCount) {
                while item >= splits[r].firstItem + kvHeads * splits[r].chunks { r += 1 }
                let split = splits[r], local = item - split.firstItem
                let g = local / split.chunks, c = local % split.chunks
                let k0 = (split.firstChunk + c) * split.chunk
                var a = rows[r]
                ember_attention_partial(&a, Int64(g), 0, Int64(k0), Int64(k0 + split.chunk),
                                        partials + r * rowPartials + (g * split.chunks + c) * group * floats,
                                        workspace.scratch[thread])
            }
        }
        pool.parallelFor(rows.count * heads) { range in
            for index in range {
                let r = index / heads, h = index % heads, g = h / group, j = h % group
                let a = rows[r], chunks = splits[r].chunks
                ember_attention_merge(partials + r * rowPartials + (g * chunks * group + j) * floats, Int64(chunks),
                                      Int64(group * floats), a.value_dim, a.out! + h * Int(a.value_dim))
            }
        }
    }
}
