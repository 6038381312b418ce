// Errors found while parsing on-disk records. Pure values: no paths, no I/O; the
// store layer adds the file name when it reports one.

/// A record read from disk (or built from user input) that cowbd cannot accept.
public enum FormatError: Error, Equatable, Sendable {
    /// The first bytes are not the expected magic: not a cowbd file of this kind.
    case badMagic(expected: String)
    /// A format version this build does not read.
    case unsupportedVersion(UInt32)
    /// Feature bits this build does not know; reading on would misinterpret the file.
    case unknownIncompatibleFeatures(UInt32)
    /// Fewer bytes than the record needs.
    case truncated(expectedByteCount: Int, actualByteCount: Int)
    /// The stored checksum does not match the bytes.
    case checksumMismatch(stored: UInt64, computed: UInt64)
    /// A field holds a value outside its valid range.
    case invalidField(name: String, value: UInt64)
    /// A size given by the user cannot be parsed.
    case invalidSize(String)
}

extension FormatError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .badMagic(let expected):
            return "not a \(expected) (bad magic)"
        case .unsupportedVersion(let version):
            return "format version \(version) is not supported by this cowbd"
        case .unknownIncompatibleFeatures(let bits):
            return "unknown incompatible feature bits 0x\(String(bits, radix: 16))"
        case .truncated(let expected, let actual):
            return "truncated: need \(expected) bytes, found \(actual)"
        case .checksumMismatch(let stored, let computed):
            return
                "checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))"
        case .invalidField(let name, let value):
            return "invalid \(name): \(value)"
        case .invalidSize(let text):
            return
                "invalid size '\(text)' (use bytes, or a number with K, M, G, T, KiB, MiB, GiB, TiB)"
        }
    }
}
