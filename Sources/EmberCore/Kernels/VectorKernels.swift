import CEmberKernels
import Foundation

/// Float vector kernels on raw pointers: the element-wise and reduction steps of a transformer
/// block. The loops themselves are C (ember_vector.h): AVX2 with FMA and a vector exp.
enum VectorKernels {
    typealias Pointer = UnsafeMutablePointer<Float>
    typealias ConstPointer = UnsafePointer<Float>

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
    static func dot(_ a: ConstPointer, _ b: ConstPointer, _ n: Int) -> Float {
        ember_vec_dot(a, b, Int64(n))
    }

    /// y[i] += a · x[i].
    @inline(__always)
    static func axpy(_ a: Float, _ x: ConstPointer, _ y: Pointer, _ n: Int) {
        ember_vec_axpy(a, x, y, Int64(n))
    }

    /// y[i] += x[i].
    static func add(_ x: ConstPointer, into y: Pointer, _ n: Int) {
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

    /// x[i] *= y[i].
    static func multiply(_ x: Pointer, by y: ConstPointer, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            store8(load8(UnsafePointer(x), i) * load8(y, i), x, i)
            i += 8
        }
        while i < n {
            x[i] *= y[i]
            i += 1
        }
    }

    /// x[i] *= a.
    static func scale(_ x: Pointer, by a: Float, _ n: Int) {
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
    static func rmsNorm(_ x: ConstPointer, weight: ConstPointer?, epsilon: Float, _ out: Pointer, _ n: Int) {
        ember_vec_rms_norm(x, weight, epsilon, out, Int64(n))
    }

    /// out = (x - mean(x)) / sd(x) · weight + bias (either nil: left out). `out` may equal `x`.
    static func layerNorm(_ x: ConstPointer, weight: ConstPointer?, bias: ConstPointer?, epsilon: Float, _ out: Pointer, _ n: Int) {
        ember_vec_layer_norm(x, weight, bias, epsilon, out, Int64(n))
    }

    /// In-place softmax: the row sums to 1.
    static func softmax(_ x: Pointer, _ n: Int) {
        ember_vec_softmax(x, Int64(n))
    }

    /// The FFN's activation, applied to the gate (or, ungated, to the up projection). `relu`
    /// gated is ReGLU, relu(gate) · up; `drelu` (Bamboo's dReLU) is relu(gate) · relu(up).
    enum Activation: String, Sendable {
        case silu, gelu, relu, drelu

        /// Whether the up projection goes through a ReLU too.
        var rectifiesUp: Bool { self == .drelu }
        /// Whether act(g) is exactly zero for every g ≤ 0 (the ReLU family, whose zeros are exact sparsity).
        var isReLU: Bool { self == .relu || self == .drelu }
    }

    /// out[i] = act(gate[i]) · up[i] (dReLU: relu(gate[i]) · relu(up[i])); with `up` nil,
    /// out[i] = act(gate[i]). `out` may be `gate`.
    static func gatedActivation(_ activation: Activation, gate: ConstPointer, up: ConstPointer?, _ out: Pointer, _ n: Int) {
        let code: Int32
        switch activation {
        case .silu: code = Int32(EMBER_ACT_SILU)
        case .gelu: code = Int32(EMBER_ACT_GELU)
        case .relu, .drelu: code = Int32(EMBER_ACT_RELU)
        }
        ember_vec_gated_activation(code, gate, up, out, Int64(n))
        if activation.rectifiesUp, let up {
            for i in 0..<n where !(up[i] > 0) { out[i] = 0 }
        }
    }

    /// x[i] *= up[i] (dReLU: relu(up[i])): the up factor of an activation already applied to the gate.
    static func multiplyUp(_ activation: Activation, _ x: Pointer, by up: ConstPointer, _ n: Int) {
        multiply(x, by: up, n)
        if activation.rectifiesUp {
            for i in 0..<n where !(up[i] > 0) { x[i] = 0 }
        }
    }
}
