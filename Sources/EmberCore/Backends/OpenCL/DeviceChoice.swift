/// Which OpenCL device a hybrid run uses: the first listed (GPUs come first), one by its
/// index in the list, or none (the CPU computes everything).
public enum DeviceChoice: Equatable, Sendable {
    case automatic
    case index(Int)
    case off
}
