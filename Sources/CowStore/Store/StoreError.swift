// Operating errors of the store layer: each names the file, the operation and the numbers.

import CowFormat
import SystemPackage

/// Why a store, base or image operation failed.
public enum StoreError: Error {
    case open(path: FilePath, Errno)
    case io(path: FilePath, operation: String, byteOffset: UInt64, Errno)
    case shortRead(path: FilePath, byteOffset: UInt64, expectedByteCount: Int, actualByteCount: Int)
    case format(path: FilePath, FormatError)
    case exists(path: FilePath)
    case inUse(path: FilePath)
    case baseMismatch(path: FilePath, base: FilePath, detail: String)
    case baseMissing(path: FilePath, tried: [String])
    case invalidArgument(String)
    case holePunchingUnsupported(path: FilePath, Errno)
    case outOfRange(byteOffset: UInt64, byteCount: UInt64, diskByteCount: UInt64)
    /// A FAST_ZERO request that would need a copy-up (as slow as a write).
    case notFast
    /// A write to a disk opened read-only.
    case readOnly
    /// An fsync of the store failed earlier: it takes no more changes until reopened.
    case failed(path: FilePath)
    /// The store is in the middle of a merge and must not be used until it is finished.
    case mergeInProgress(path: FilePath, target: String)
    /// A network base (an NBD URI) that cannot serve: unreachable past the base timeout,
    /// changed when it came back, or answering with an error.
    case remoteBase(uri: String, detail: String)
}

extension StoreError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .open(let path, let errno):
            return "\(path): cannot open: \(errno)"
        case .io(let path, let operation, let byteOffset, let errno):
            return "\(path): \(operation) at byte \(byteOffset) failed: \(errno)"
        case .shortRead(let path, let byteOffset, let expected, let actual):
            return
                "\(path): short read at byte \(byteOffset): expected \(expected) bytes, got \(actual)"
        case .format(let path, let error):
            return "\(path): \(error)"
        case .exists(let path):
            return "\(path): already exists (refusing to overwrite)"
        case .inUse(let path):
            return "\(path): in use by another cowbd process (serve, check or merge)"
        case .baseMismatch(let path, let base, let detail):
            return
                "\(path): base \(base) has changed since the store was created: \(detail); refusing to use it"
        case .baseMissing(let path, let tried):
            return "\(path): base image not found (tried \(tried.joined(separator: ", ")))"
        case .invalidArgument(let text):
            return text
        case .holePunchingUnsupported(let path, let errno):
            return
                "\(path): the filesystem cannot punch holes (\(errno)); a COW store needs sparse files with hole punching (ext4, xfs, btrfs, tmpfs)"
        case .outOfRange(let byteOffset, let byteCount, let diskByteCount):
            return
                "request of \(byteCount) bytes at \(byteOffset) is outside the disk (\(diskByteCount) bytes)"
        case .notFast:
            return "zeroing this range is not faster than writing it"
        case .readOnly:
            return "the disk is read-only"
        case .failed(let path):
            return
                "\(path): an earlier fsync of the store failed, so writes since the last successful flush may be lost; it takes no more changes until it is reopened"
        case .remoteBase(let uri, let detail):
            return "\(uri): \(detail)"
        case .mergeInProgress(let path, let target):
            return
                "\(path): a merge into \(target) was interrupted; run cowbd merge again to finish it, or take it back with --abort"
        }
    }

    /// The errno behind the failure, when there is one (used for NBD error mapping).
    public var errno: Errno? {
        switch self {
        case .open(_, let errno), .io(_, _, _, let errno), .holePunchingUnsupported(_, let errno):
            return errno
        case .failed: return .ioError
        default: return nil
        }
    }
}
