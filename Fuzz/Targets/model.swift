import Foundation
@testable import EmberCore

// A model built from a fuzzed GGUF file. Kept to the one call so it follows the loading API.

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    Fuzz.writeSeedsIfAsked(Seeds.models)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let file = Fuzz.file(data, size) else { return 0 }
    do {
        _ = try LanguageModel(file: file)
    } catch {
        Fuzz.render(error)
    }
    return 0
}
