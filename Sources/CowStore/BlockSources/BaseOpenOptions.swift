// Settings for opening a base that come from the command line (`serve --cache-size`, the
// logger, the lock), and the magic-number sniff that tells a compressed image from a raw one. No format logic here.

import CowFormat
import Logging
import SystemPackage

/// How the block sources of a store's chain are opened: passed by the caller (the command
/// that parsed the options) to every opener on the way down.
public struct BaseOpenOptions: Sendable {
    /// Bytes of decompressed blocks a compressed base keeps, shared by all its readers.
    public var cacheByteCount: Int
    /// Where opened sources (and disks opened with these options) report what they find.
    public var logger: Logger
    /// The lock each source takes on its file while open.
    public var lock: SourceLock
    /// How a base on an NBD server is read: its timeout, cache and connections.
    public var remote: RemoteBaseSettings
    /// The stores above the source being opened, top first: a lower store found among them is
    /// a cycle, and their count bounds the chain's depth (LayerChain.swift).
    public var layersAbove: [LayerAbove] = []

    public init(
        cacheByteCount: Int = CompressedBaseImage.defaultCacheByteCount, logger: Logger,
        lock: SourceLock = .shared, remote: RemoteBaseSettings = RemoteBaseSettings()
    ) {
        self.cacheByteCount = cacheByteCount
        self.logger = logger
        self.lock = lock
        self.remote = remote
    }

    /// The defaults, with a logger that writes nothing: for callers with nothing to log to
    /// (tests, fuzz targets). The cowbd command passes its own logger instead.
    public static let quiet = BaseOpenOptions(
        logger: Logger(label: "cowbd.quiet", factory: { _ in SwiftLogNoOpLogHandler() }))
}

extension BaseLocator {
    /// The first `byteCount` bytes of the file at `path` (fewer if it is shorter): enough to
    /// tell what it is. Throws `StoreError.open` if it cannot be opened, like the images do.
    static func leadingBytes(of path: FilePath, byteCount: Int = 8) throws -> [UInt8] {
        let descriptor = try FileDescriptor.openClosingOnExec(path, .readOnly)
        defer { try? descriptor.close() }
        var bytes = [UInt8](repeating: 0, count: byteCount)
        let done: Int
        do {
            done = try bytes.withUnsafeMutableBytes {
                try descriptor.readUpToFully(at: 0, into: $0)
            }
        } catch let errno as Errno {
            throw StoreError.io(path: path, operation: "read", byteOffset: 0, errno)
        }
        return Array(bytes[..<done])
    }

    /// Whether the file at `path` starts with the compressed image magic ("COWBDLZ4").
    static func isCompressedImage(at path: FilePath) throws -> Bool {
        try leadingBytes(of: path) == LZ4ImageHeader.magic
    }
}
