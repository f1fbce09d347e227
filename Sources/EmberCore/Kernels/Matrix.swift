/// Float storage for `rows` vectors of `length` floats, 64-byte aligned: the activations of a
/// batch, one row per token.
final class Matrix {
    let rows: Int
    let length: Int
    let pointer: UnsafeMutablePointer<Float>
    private let owned: Bool

    init(rows: Int, length: Int) {
        self.rows = rows
        self.length = length
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(rows * length, 16) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(rows * length, 16))
        pointer.initialize(repeating: 0, count: max(rows * length, 16))
        owned = true
    }

    /// Rows `range` of another matrix, sharing its memory (the other must outlive this one).
    init(rowsOf other: Matrix, _ range: Range<Int>) {
        precondition(range.upperBound <= other.rows)
        rows = range.count
        length = other.length
        pointer = other.row(range.lowerBound)
        owned = false
    }

    deinit { if owned { pointer.deallocate() } }

    @inline(__always)
    func row(_ r: Int) -> UnsafeMutablePointer<Float> { pointer + r * length }

    /// Row `r` copied out.
    func array(row r: Int) -> [Float] { Array(UnsafeBufferPointer(start: row(r), count: length)) }
}
