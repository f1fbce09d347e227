import Foundation

/// Float vector kernels on raw pointers: the element-wise and reduction steps of a transformer
/// block. SIMD8<Float> keeps them as fast as hand-written AVX2 (they are memory-bound).
public enum VectorKernels {
    public typealias Pointer = UnsafeMutablePointer<Float>
    public typealias ConstPointer = UnsafePointer<Float>

    @inline(__always)
    static func load8(_ p: ConstPointer, _ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func store8(_ v: SIMD8<Float>, _ p: Pointer, _ i: Int) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// Σ a[i]·b[i].
    @inline(__always)
    public static func dot(_ a: ConstPointer, _ b: ConstPointer, _ n: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            s0.addProduct(load8(a, i), load8(b, i))
            s1.addProduct(load8(a, i + 8), load8(b, i + 8))
            i += 16
        }
        while i + 8 <= n {
            s0.addProduct(load8(a, i), load8(b, i))
            i += 8
        }
        var sum = (s0 + s1).sum()
        while i < n {
            sum += a[i] * b[i]
            i += 1
        }
        return sum
    }

    /// y[i] += a · x[i].
    @inline(__always)
    public static func axpy(_ a: Float, _ x: ConstPointer, _ y: Pointer, _ n: Int) {
        let va = SIMD8<Float>(repeating: a)
        var i = 0
        while i + 8 <= n {
            var v = load8(UnsafePointer(y), i)
            v.addProduct(va, load8(x, i))
            store8(v, y, i)
            i += 8
        }
        while i < n {
            y[i] += a * x[i]
            i += 1
        }
    }

    /// y[i] += x[i].
    public static func add(_ x: ConstPointer, into y: Pointer, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            store8(load8(UnsafePointer(y), i) + load8(x, i), y, i)
            i += 8
        }
        while i < n {
            y[i] += x[i]
            i += 1
        }
    }

    /// x[i] *= a.
    public static func scale(_ x: Pointer, by a: Float, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            store8(load8(UnsafePointer(x), i) * a, x, i)
            i += 8
        }
        while i < n {
            x[i] *= a
            i += 1
        }
    }

    /// out = x / rms(x) · weight (weight nil: no scaling). `out` may equal `x`.
    public static func rmsNorm(_ x: ConstPointer, weight: ConstPointer?, epsilon: Float, _ out: Pointer, _ n: Int) {
        let meanSquare = dot(x, x, n) / Float(n)
        let inverse = 1 / (meanSquare + epsilon).squareRoot()
        var i = 0
        if let weight {
            while i + 8 <= n {
                store8(load8(x, i) * inverse * load8(weight, i), out, i)
                i += 8
            }
            while i < n {
                out[i] = x[i] * inverse * weight[i]
                i += 1
            }
        } else {
            while i + 8 <= n {
                store8(load8(x, i) * inverse, out, i)
                i += 8
            }
            while i < n {
                out[i] = x[i] * inverse
                i += 1
            }
        }
    }

    /// In-place softmax; returns nothing, the row sums to 1.
    public static func softmax(_ x: Pointer, _ n: Int) {
        guard n > 0 else { return }
        var maximum = -Float.infinity
        for i in 0..<n { maximum = max(maximum, x[i]) }
        var sum: Float = 0
        for i in 0..<n {
            let e = Foundation.exp(x[i] - maximum)
            x[i] = e
            sum += e
        }
        scale(x, by: 1 / sum, n)
    }

    /// The FFN's activation, applied to the gate (or, ungated, to the up projection).
    public enum Activation: String, Sendable {
        case silu, gelu, relu

        @inline(__always)
        public func apply(_ v: Float) -> Float {
            switch self {
            case .silu:
                return v / (1 + Foundation.exp(-v))
            case .gelu:
                // The tanh approximation, as GeGLU models are trained with.
                let c: Float = 0.7978845608028654  // sqrt(2/pi)
                return 0.5 * v * (1 + Foundation.tanh(c * (v + 0.044715 * v * v * v)))
            case .relu:
                return max(v, 0)
            }
        }
    }

    /// out[i] = act(gate[i]) · up[i]; with `up` nil, out[i] = act(gate[i]).
    public static func gatedActivation(_ activation: Activation, gate: ConstPointer, up: ConstPointer?, _ out: Pointer, _ n: Int) {
        if let up {
            for i in 0..<n { out[i] = activation.apply(gate[i]) * up[i] }
        } else {
            for i in 0..<n { out[i] = activation.apply(gate[i]) }
        }
    }
}
