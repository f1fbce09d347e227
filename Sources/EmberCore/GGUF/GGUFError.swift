import Foundation

/// Everything that can be wrong with a GGUF file, each naming the file, the part at fault and
/// what was expected. Keys and tensor names come from the file, so messages show them escaped
/// and shortened (`SafeText`): a crafted name cannot write to the terminal.
public enum GGUFError: Error, Equatable, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)
    case badMagic(path: String, found: [UInt8])
    case unsupportedVersion(path: String, version: UInt32)
    case truncated(path: String, reading: String, offset: Int)
    case absurdCount(path: String, what: String, count: UInt64)
    case invalidUTF8(path: String, offset: Int)
    case unknownValueType(path: String, key: String, code: UInt32)
    case arrayTooDeep(path: String, key: String)
    case duplicateKey(path: String, key: String)
    case wrongKeyType(path: String, key: String, expected: String, found: String)
    case missingKey(path: String, key: String)
    case badAlignment(path: String, alignment: Int)
    case unknownTensorType(path: String, tensor: String, code: UInt32)
    case badDimensions(path: String, tensor: String, dims: [UInt64])
    case duplicateTensor(path: String, tensor: String)
    case misalignedTensor(path: String, tensor: String, offset: UInt64)
    case tensorOutOfBounds(path: String, tensor: String, end: UInt64, fileSize: Int)
    /// `tensor`'s data begins inside `other`'s.
    case overlappingTensors(path: String, tensor: String, other: String)
    case missingTensor(path: String, tensor: String)
    case wrongTensorShape(path: String, tensor: String, expected: [Int], found: [Int])
    case unsupportedTensorType(path: String, tensor: String, type: TensorType)
    /// A tensor holds NaN or an infinity (first at element `index`).
    case nonFiniteValue(path: String, tensor: String, index: Int)
    case writeFailed(path: String, reason: String)

    public var description: String {
        func q(_ text: String) -> String { SafeText.quoted(text) }
        switch self {
        case .cannotOpen(let path, let reason):
            return "\(path): cannot open: \(reason)"
        case .badMagic(let path, let found):
            let shown = found.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
            return "\(path): not a GGUF file (magic is \"\(shown)\", expected \"GGUF\")"
        case .unsupportedVersion(let path, let version):
            return "\(path): GGUF version \(version) is not supported (Ember reads versions 2 and 3)"
        case .truncated(let path, let reading, let offset):
            return "\(path): file ends while reading \(reading) at byte \(offset)"
        case .absurdCount(let path, let what, let count):
            return "\(path): \(what) of \(count) cannot fit in the file"
        case .invalidUTF8(let path, let offset):
            return "\(path): string at byte \(offset) is not valid UTF-8"
        case .unknownValueType(let path, let key, let code):
            return "\(path): metadata key \(q(key)) has unknown value type \(code) (expected 0 to 12)"
        case .arrayTooDeep(let path, let key):
            return "\(path): metadata key \(q(key)) nests arrays deeper than \(GGUFFile.maxArrayDepth) levels"
        case .duplicateKey(let path, let key):
            return "\(path): metadata key \(q(key)) appears twice"
        case .wrongKeyType(let path, let key, let expected, let found):
            return "\(path): metadata key \(q(key)) is \(found), expected \(expected)"
        case .missingKey(let path, let key):
            return "\(path): required metadata key \(q(key)) is missing"
        case .badAlignment(let path, let alignment):
            return "\(path): general.alignment \(alignment) is not a positive power of two"
        case .unknownTensorType(let path, let tensor, let code):
            return "\(path): tensor \(q(tensor)) has unknown type code \(code)"
        case .badDimensions(let path, let tensor, let dims):
            return "\(path): tensor \(q(tensor)) has invalid dimensions \(dims) (expected 1 to \(GGUFFile.maxDims) dimensions "
                + "of 1 to \(ReaderLimits.dimensionLength.range.upperBound), at most 2^40 elements, rows of whole blocks)"
        case .duplicateTensor(let path, let tensor):
            return "\(path): tensor \(q(tensor)) appears twice"
        case .misalignedTensor(let path, let tensor, let offset):
            return "\(path): tensor \(q(tensor)) data offset \(offset) is not a multiple of the file's alignment"
        case .tensorOutOfBounds(let path, let tensor, let end, let fileSize):
            return "\(path): tensor \(q(tensor)) extends to byte \(end), past the end of the file (\(fileSize) bytes)"
        case .overlappingTensors(let path, let tensor, let other):
            return "\(path): tensor \(q(tensor)) begins inside the data of tensor \(q(other)) (expected separate data)"
        case .missingTensor(let path, let tensor):
            return "\(path): required tensor \(q(tensor)) is missing"
        case .wrongTensorShape(let path, let tensor, let expected, let found):
            return "\(path): tensor \(q(tensor)) has shape \(found), expected \(expected)"
        case .unsupportedTensorType(let path, let tensor, let type):
            return "\(path): tensor \(q(tensor)) has type \(type), which Ember cannot compute"
        case .nonFiniteValue(let path, let tensor, let index):
            return "\(path): tensor \(q(tensor)) holds a NaN or infinite value (element \(index)); expected finite numbers"
        case .writeFailed(let path, let reason):
            return "\(path): cannot write: \(reason)"
        }
    }
}

extension GGUFError: LocalizedError {
    public var errorDescription: String? { description }
}
