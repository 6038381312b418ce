// The rules of a chain of stores (a store whose lower layer is another store's disk): how
// deep it may be, how a cycle is recognised, and the errors that name the layer at fault.
// Opening is BaseLocator's and VirtualDiskImage's; this file holds only the rules.

import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Limits and identities of a chain of stores.
public enum LayerChain {
    /// Most stores that may stack over the bottom image (raw or compressed), the top included.
    /// A bound on recursion and open descriptors; qemu has no limit, but a deeper chain is
    /// better collapsed.
    public static let maxStoreCount = 64
}

/// A file's identity (device and inode), so a layer that is its own lower is recognised
/// whatever path names it.
public struct FileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64

    /// The identity of the file at `path`. The corresponding C function is `stat`.
    public init(of path: FilePath) throws {
        var status = stat()
        guard stat(path.string, &status) == 0 else {
            throw StoreError.open(path: path, Errno(rawValue: errno))
        }
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}

/// A store opened above the layer being opened: what a cycle is checked against.
public struct LayerAbove: Sendable {
    public var path: FilePath
    public var identity: FileIdentity

    public init(path: FilePath, identity: FileIdentity) {
        self.path = path
        self.identity = identity
    }
}

/// Why a chain of stores cannot be opened or extended. Each names the layer at fault.
public enum ChainError: Error, CustomStringConvertible {
    /// The lower layer of `store` is `lower`, which is `store` itself or a layer above it.
    case cycle(store: FilePath, lower: FilePath)
    /// Opening `store` would make a chain of more than `LayerChain.maxStoreCount` stores.
    case tooDeep(store: FilePath, storeCount: Int)
    /// `store` is a frozen layer (made by `snapshot`): it takes no writes.
    case frozen(store: FilePath)

    public var description: String {
        switch self {
        case .cycle(let store, let lower):
            return
                "\(store): its lower layer \(lower) is the store itself or a layer above it (a cycle); refusing to open the chain"
        case .tooDeep(let store, let storeCount):
            return
                "\(store): would be store \(storeCount) of its chain; at most \(LayerChain.maxStoreCount) stores may stack over the bottom image (collapse or merge the chain first)"
        case .frozen(let store):
            return
                "\(store): a frozen layer (made by cowbd snapshot) is read-only: other stores are built over it; serve it with --read-only or create a store over it (if a cowbd snapshot was interrupted, run it again)"
        }
    }
}
