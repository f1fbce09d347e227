import Foundation
@testable import EmberCore

// The GGUF reader: header, metadata, tensor table; then every typed accessor, every tensor's
// geometry and (for small tensors) its values through the dequantizers.

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    Fuzz.writeSeedsIfAsked(Seeds.gguf)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let file = Fuzz.file(data, size) else { return 0 }
    for key in file.metadataKeys {
        // Every accessor runs; the messages are alike, so one per key is rendered.
        var firstError: Error?
        for read in [{ _ = try file.int(key) }, { _ = try file.float(key) }, { _ = try file.string(key) }, { _ = try file.bool(key) },
                     { _ = try file.stringArray(key) }, { _ = try file.floatArray(key) }, { _ = try file.intArray(key) },
                     { _ = try file.int(key, within: ReaderLimits.layers) }] {
            do { try read() } catch { firstError = firstError ?? error }
        }
        if let firstError { Fuzz.render(firstError) }
    }
    for tensor in file.tensors {
        Fuzz.check(tensor.offset >= file.dataOffset && tensor.offset + tensor.byteCount <= file.file.bytes.count)
        _ = (tensor.elementCount, tensor.rowLength, tensor.rowCount, tensor.rowBytes)
        if tensor.byteCount <= 1 << 16 { _ = file.firstNonFiniteElement(of: tensor) }
    }
    return 0
}
