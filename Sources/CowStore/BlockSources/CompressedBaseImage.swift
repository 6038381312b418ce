// A compressed image (docs/FORMAT.md, "Compressed base image") opened as a read-only base:
// the header, footer, index and shared dictionary are checked here, once; reads are in
// CompressedBaseImage+Read.

import CowFormat
import CowSupport
import Logging
import Synchronization
import SystemPackage

/// A cowbd-lz4 image: independently LZ4-compressed blocks behind an index, read through a
/// cache of decompressed blocks shared by every thread that reads it.
public final class CompressedBaseImage: BlockSource {
    /// `serve --cache-size` when not given.
    public static let defaultCacheByteCount = 64 << 20

    public let path: FilePath
    /// The uncompressed size: the size of the disk the image holds.
    public var byteCount: UInt64 { header.virtualByteCount }
    public var kindName: String { "cowbd-lz4" }
    public let header: LZ4ImageHeader
    /// Index entries that failed their checksum at open: reads of those blocks fail.
    public let damagedEntryCount: UInt64
    /// Immutable after init: shared by every thread, used only with positional reads.
    let descriptor: FileDescriptor
    /// The block index as stored; each entry is parsed (and its checksum checked) when used.
    let index: [UInt8]
    /// The shared dictionary every LZ4 block was compressed against (empty: none).
    let dictionary: [UInt8]
    /// Why the dictionary cannot be used (its checksum failed), or nil: then every LZ4 block
    /// fails to read with this reason, and raw and zero blocks still read.
    public let dictionaryProblem: String?
    let cache: DecompressedBlockCache
    /// Bytes in one scratch buffer of a whole-block read: `maxRunStoredByteCount`, or one
    /// block if that is larger.
    let scratchByteCount: Int
    /// Scratch buffers of whole-block reads, each used by one read at a time.
    let scratchBuffers = Locked<[UnsafeMutableRawBufferPointer]>([])
    let loadCounter = Atomic<UInt64>(0)

    /// Blocks read from the file so far (by reads and by `verify`): cache misses, for stats
    /// and tests.
    public var loadedBlockCount: UInt64 { loadCounter.load(ordering: .relaxed) }

    /// Blocks held decompressed in the cache now, for stats and tests.
    public var cachedBlockCount: Int { cache.readyBlockCount }

    /// Opens `path` read-only, and refuses it unless the header, the footer, the file size and
    /// every index entry that is not damaged agree (entries in order, data inside the file).
    /// Takes `options.lock` on the file first. The corresponding C function is `open(O_RDONLY)`.
    public init(path: FilePath, options: BaseOpenOptions = .quiet) throws {
        self.path = path
        descriptor = try FileDescriptor.openLockedForReading(path, lock: options.lock)
        do {
            header = try Self.readHeader(descriptor, path: path)
            index = try Self.readIndex(descriptor, header: header, path: path)
            damagedEntryCount = try Self.validateIndex(index, header: header, path: path)
            dictionary = try Self.readBytes(
                descriptor, at: header.dataByteOffset, count: Int(header.dictionaryByteCount),
                path: path)
        } catch {
            try? descriptor.close()
            throw error
        }
        let checksum = dictionary.withUnsafeBytes { LZ4ImageHeader.dictionaryChecksum(of: $0) }
        if header.dictionaryByteCount > 0 && checksum != header.dictionaryChecksum {
            dictionaryProblem =
                "dictionary damaged (checksum mismatch: stored 0x"
                + "\(String(header.dictionaryChecksum, radix: 16)), computed 0x"
                + "\(String(checksum, radix: 16)))"
        } else {
            dictionaryProblem = nil
        }
        let blockByteCount = Int(header.geometry.blockByteCount)
        scratchByteCount = max(Self.maxRunStoredByteCount, blockByteCount)
        cache = DecompressedBlockCache(
            byteCount: options.cacheByteCount,
            slotByteCount: blockByteCount
                + LZ4Decompressor.inPlaceMargin(decompressedByteCount: blockByteCount),
            maxSlotCount: Int(clamping: header.blockCount))
        if let dictionaryProblem {
            options.logger.info(
                "compressed base has a damaged dictionary; reads of LZ4 blocks will fail",
                metadata: ["path": "\(path)", "problem": "\(dictionaryProblem)"])
        }
        if damagedEntryCount > 0 {
            options.logger.info(
                "compressed base has damaged index entries; reads of those blocks will fail",
                metadata: ["path": "\(path)", "damagedEntries": "\(damagedEntryCount)"])
        }
    }

    deinit {
        for scratch in scratchBuffers.withLock({ $0 }) { scratch.deallocate() }
        try? descriptor.close()
    }

    /// Reads the header, and the footer that must repeat it at the end of a file of exactly
    /// the size it records.
    private static func readHeader(_ descriptor: FileDescriptor, path: FilePath) throws
        -> LZ4ImageHeader
    {
        let fileByteCount: UInt64
        do {
            fileByteCount = try descriptor.byteCount()
        } catch {
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
        let recordByteCount = LZ4ImageHeader.recordByteCount
        let headerBytes = try readBytes(descriptor, at: 0, count: recordByteCount, path: path)
        let header: LZ4ImageHeader
        do {
            header = try headerBytes.withUnsafeBytes { try LZ4ImageHeader(parsing: $0) }
        } catch let error as FormatError {
            throw StoreError.format(path: path, error)
        }
        guard fileByteCount >= header.fileByteCount else {
            throw StoreError.format(
                path: path,
                .truncated(
                    expectedByteCount: Int(clamping: header.fileByteCount),
                    actualByteCount: Int(clamping: fileByteCount)))
        }
        guard fileByteCount == header.fileByteCount else {
            throw StoreError.format(
                path: path,
                .invalidField(name: "file size (bytes past the footer)", value: fileByteCount))
        }
        let footerBytes = try readBytes(
            descriptor, at: header.footerByteOffset, count: recordByteCount, path: path)
        guard footerBytes == headerBytes else {
            throw StoreError.format(
                path: path,
                .invalidField(
                    name: "footer (it differs from the header) at byte",
                    value: header.footerByteOffset))
        }
        return header
    }

    /// The whole index, as stored. Its size is bounded by the file's (checked by `readHeader`)
    /// and by `LZ4ImageHeader.maxIndexByteCount` (a sparse file can be as large as it claims);
    /// both are checked again here, before the index is allocated.
    private static func readIndex(
        _ descriptor: FileDescriptor, header: LZ4ImageHeader, path: FilePath
    ) throws -> [UInt8] {
        guard header.indexByteCount <= LZ4ImageHeader.maxIndexByteCount,
            header.indexByteOffset + header.indexByteCount <= header.footerByteOffset,
            let indexByteCount = Int(exactly: header.indexByteCount)
        else {
            throw StoreError.format(
                path: path, .invalidField(name: "index size", value: header.indexByteCount))
        }
        return try readBytes(
            descriptor, at: header.indexByteOffset, count: indexByteCount, path: path)
    }

    /// Checks every entry that passes its checksum: flags known, sizes right for its block,
    /// data between the index and the footer, each block after the one before (no overlap).
    /// Returns how many entries failed their checksum: damage confined to those blocks.
    /// Any other fault refuses the image: the file was not written by a correct writer.
    private static func validateIndex(_ index: [UInt8], header: LZ4ImageHeader, path: FilePath)
        throws -> UInt64
    {
        let dataRange = header.blockDataByteOffset..<header.footerByteOffset
        var damagedCount: UInt64 = 0
        var previousEnd = header.blockDataByteOffset
        try index.withUnsafeBytes { bytes in
            for blockIndex in 0..<header.blockCount {
                let entryOffset = Int(blockIndex) * LZ4BlockEntry.byteCount
                let entryBytes = UnsafeRawBufferPointer(
                    rebasing: bytes[entryOffset..<(entryOffset + LZ4BlockEntry.byteCount)])
                let entry: LZ4BlockEntry
                do {
                    entry = try LZ4BlockEntry(parsing: entryBytes, blockIndex: blockIndex)
                    try entry.validate(
                        blockByteCount: header.geometry.byteCount(
                            ofBlock: blockIndex, virtualByteCount: header.virtualByteCount),
                        dataRange: dataRange)
                } catch FormatError.checksumMismatch {
                    damagedCount += 1
                    continue
                } catch {
                    throw StoreError.format(
                        path: path,
                        .invalidField(
                            name: "index entry of block \(blockIndex): \(error)",
                            value: header.indexByteOffset + UInt64(entryOffset)))
                }
                guard entry.storage != .zero else { continue }
                guard entry.dataByteOffset >= previousEnd else {
                    throw StoreError.format(
                        path: path,
                        .invalidField(
                            name: "data offset of block \(blockIndex) (overlaps the block before)",
                            value: entry.dataByteOffset))
                }
                previousEnd = entry.dataEndByteOffset
            }
        }
        return damagedCount
    }

    /// `count` bytes at `byteOffset`; a short read is a truncated file.
    static func readBytes(
        _ descriptor: FileDescriptor, at byteOffset: UInt64, count: Int, path: FilePath
    ) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let done: Int
        do {
            done = try bytes.withUnsafeMutableBytes {
                try descriptor.readUpToFully(at: byteOffset, into: $0)
            }
        } catch let errno as Errno {
            throw StoreError.io(path: path, operation: "read", byteOffset: byteOffset, errno)
        }
        guard done == count else {
            throw StoreError.format(
                path: path, .truncated(expectedByteCount: count, actualByteCount: done))
        }
        return bytes
    }
}
