// Settings for opening a base that come from the command line (`serve --cache-size`), and the
// magic-number sniff that tells a compressed image from a raw one. No format logic here.

import CowFormat
import Logging
import SystemPackage

/// How `BaseLocator.openImage` opens the images it finds.
public struct BaseOpenOptions: Sendable {
    /// Bytes of decompressed blocks a compressed base keeps, shared by all its readers.
    public var cacheByteCount: Int
    /// Where a compressed base reports damage it finds when it opens.
    public var logger: Logger

    public init(
        cacheByteCount: Int = CompressedBaseImage.defaultCacheByteCount,
        logger: Logger = Logger(label: "cowbd.base", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.cacheByteCount = cacheByteCount
        self.logger = logger
    }
}

extension BaseLocator {
    /// The options for bases opened by the current thread or task. A command sets them around
    /// the call that opens a store (`$openOptions.withValue(...) { VirtualDisk.open(...) }`),
    /// so they reach the base without every opener in between passing them on.
    @TaskLocal public static var openOptions = BaseOpenOptions()

    /// The first `byteCount` bytes of the file at `path` (fewer if it is shorter): enough to
    /// tell what it is. Throws `StoreError.open` if it cannot be opened, like the images do.
    static func leadingBytes(of path: FilePath, byteCount: Int = 8) throws -> [UInt8] {
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
        } catch let errno as Errno {
            throw StoreError.open(path: path, errno)
        }
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
