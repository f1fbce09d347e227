import CEmberKernels

/// The SIMD family the quantized kernels run: the best this CPU has, unless a comparison caps
/// it. Every family gives the same bits on the quantized products (their integer sums are
/// exact and their float steps the same); they differ in speed only.
public enum KernelFamily: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case portable = 0  // EMBER_KERNELS_PORTABLE
    case avx2 = 1  // EMBER_KERNELS_AVX2
    case avx512VNNI = 2  // EMBER_KERNELS_AVX512_VNNI

    /// The family in use now.
    public static var current: KernelFamily { KernelFamily(rawValue: ember_kernel_level()) ?? .portable }

    /// The best family this CPU runs.
    public static var best: KernelFamily { KernelFamily(rawValue: ember_cpu_kernel_level()) ?? .portable }

    /// Caps the family for every later kernel call in the process (nil lifts the cap). For
    /// benchmarks and tests that compare families; a cap above `best` has no effect.
    public static func limit(to family: KernelFamily?) { ember_limit_kernels(family?.rawValue ?? -1) }

    /// The name a command line uses (`--kernels`).
    public var name: String {
        switch self {
        case .portable: "portable"
        case .avx2: "avx2"
        case .avx512VNNI: "avx512-vnni"
        }
    }

    public init?(name: String) {
        guard let family = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = family
    }

    public var description: String {
        switch self {
        case .portable: "portable"
        case .avx2: "AVX2"
        case .avx512VNNI: "AVX-512 VNNI"
        }
    }
}
