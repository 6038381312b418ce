// A raw image file or block device as a block source: positional reads on one descriptor,
// SEEK_DATA/SEEK_HOLE for allocation, and the shared lock that keeps writers out while it is
// open (SourceLock.swift).

import CowFormat
import SystemPackage

/// A raw image file or block device, opened read-only.
public final class RawBaseImage: BlockSource {
    public let path: FilePath
    public let byteCount: UInt64
    public var kindName: String { "raw" }
    /// Immutable after init: shared by every thread, used only with positional reads.
    private let descriptor: FileDescriptor

    /// Opens `path` read-only and takes `lock` on it (a writer's exclusive lock then fails;
    /// a file being written in place fails this open). The corresponding C functions are
    /// `open(O_RDONLY)` and `flock`.
    public init(path: FilePath, lock: SourceLock = .shared) throws {
        self.path = path
        descriptor = try FileDescriptor.openLockedForReading(path, lock: lock)
        do {
            byteCount = try descriptor.byteCount()
        } catch {
            try? descriptor.close()
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
    }

    deinit { try? descriptor.close() }

    public func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        let done: Int
        do {
            done = try descriptor.readUpToFully(at: byteOffset, into: buffer)
        } catch {
            throw StoreError.io(path: path, operation: "read", byteOffset: byteOffset, error)
        }
        // A base that shrank underneath us must not turn into zeros: that would be wrong bytes.
        guard done == buffer.count else {
            throw StoreError.shortRead(
                path: path, byteOffset: byteOffset, expectedByteCount: buffer.count,
                actualByteCount: done)
        }
    }

    /// Only from the page cache (`preadv2(RWF_NOWAIT)`): a miss would wait on the device.
    public func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        precondition(byteOffset + UInt64(buffer.count) <= byteCount, "base read past its end")
        return descriptor.readIfCached(at: byteOffset, into: buffer)
    }

    public func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        precondition(byteOffset < byteCount && maxByteCount > 0)
        let limit = min(maxByteCount, byteCount - byteOffset)
        do {
            guard let dataStart = try descriptor.nextData(from: byteOffset) else {
                return SourceExtent(byteCount: limit, isHole: true)
            }
            if dataStart > byteOffset {
                return SourceExtent(byteCount: min(limit, dataStart - byteOffset), isHole: true)
            }
            let holeStart = try descriptor.nextHole(from: byteOffset)
            return SourceExtent(
                byteCount: min(limit, max(holeStart, byteOffset + 1) - byteOffset), isHole: false)
        } catch {
            // Block devices and some filesystems cannot tell: everything is data.
            return SourceExtent(byteCount: limit, isHole: false)
        }
    }

    public func prefetch(at byteOffset: UInt64, byteCount: UInt64) {
        descriptor.adviseWillNeed(at: byteOffset, byteCount: byteCount)
    }
}
