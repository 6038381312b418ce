// One entry of a compressed image's block index: where block N's bytes are, how they are
// stored, and the checksums that catch a damaged entry or damaged data. No I/O.

import CXXHash

/// Where one block of a compressed image lives (docs/FORMAT.md, "Block index").
public struct LZ4BlockEntry: Equatable, Sendable {
    /// Bytes one entry takes in the index; entry N is at `index_offset + N * byteCount`.
    public static let byteCount = 32

    /// How a block's bytes are stored.
    public enum Storage: Equatable, Sendable {
        /// An LZ4 block (the LZ4 block format, no frame), fewer bytes than the block holds.
        case lz4
        /// The block's bytes as they are: LZ4 could not make them smaller.
        case raw
        /// All zeros: nothing is stored, reads report a hole.
        case zero
    }

    /// Bytes the entry checksum covers: all before it, the entry's last 8.
    static let checksummedByteCount = byteCount - 8

    /// Flag bits: bit 0 ZERO, bit 1 RAW; neither means LZ4.
    enum Flag {
        static let zero: UInt32 = 1 << 0
        static let raw: UInt32 = 1 << 1
    }

    public var storage: Storage
    /// File offset of the stored bytes; 0 for a zero block.
    public var dataByteOffset: UInt64
    /// Bytes stored in the file; 0 for a zero block.
    public var storedByteCount: UInt32
    /// `dataChecksum(of:)` of the stored bytes; 0 for a zero block.
    public var dataChecksum: UInt64

    /// The entry of an all-zero block.
    public static let zero = LZ4BlockEntry(
        storage: .zero, dataByteOffset: 0, storedByteCount: 0, dataChecksum: 0)

    public init(
        storage: Storage, dataByteOffset: UInt64, storedByteCount: UInt32, dataChecksum: UInt64
    ) {
        self.storage = storage
        self.dataByteOffset = dataByteOffset
        self.storedByteCount = storedByteCount
        self.dataChecksum = dataChecksum
    }

    /// The checksum of a block's stored bytes: XXH3-64, seed 0. Checked before decompressing.
    /// On x86-64 through libxxhash's run-time dispatch (AVX2 where the CPU has it): the same
    /// value, for about half the instructions of its SSE2 build on a random read's block.
    public static func dataChecksum(of storedBytes: UnsafeRawBufferPointer) -> UInt64 {
        #if arch(x86_64)
            XXH3_64bits_dispatch(storedBytes.baseAddress, storedBytes.count)
        #else
            XXH3_64bits(storedBytes.baseAddress, storedBytes.count)
        #endif
    }

    /// Parses entry `blockIndex` from its `byteCount` bytes. Throws `checksumMismatch` for a
    /// damaged entry (the entry checksum is seeded with the block index, so an entry copied to
    /// the wrong place is damaged too) and `invalidField` for flags this version does not know.
    /// The offsets are checked against the image by `validate`.
    public init(parsing bytes: UnsafeRawBufferPointer, blockIndex: UInt64) throws(FormatError) {
        precondition(bytes.count >= Self.byteCount, "an index entry is 32 bytes")
        var reader = LittleEndianReader(bytes)
        dataByteOffset = reader.read()
        storedByteCount = reader.read()
        let flags: UInt32 = reader.read()
        dataChecksum = reader.read()
        let storedEntryChecksum: UInt64 = reader.read()
        precondition(reader.byteOffset == Self.byteCount, "the fields fill the entry")
        let computed = Self.entryChecksum(of: bytes, blockIndex: blockIndex)
        guard storedEntryChecksum == computed else {
            throw .checksumMismatch(stored: storedEntryChecksum, computed: computed)
        }
        switch flags {
        case 0: storage = .lz4
        case Flag.raw: storage = .raw
        case Flag.zero: storage = .zero
        case let flags: throw .invalidField(name: "block flags", value: UInt64(flags))
        }
    }

    /// Checks the entry against its block: `blockByteCount` uncompressed bytes, stored data
    /// only within `dataRange` (data offset up to the footer).
    public func validate(blockByteCount: Int, dataRange: Range<UInt64>) throws(FormatError) {
        switch storage {
        case .zero:
            guard dataByteOffset == 0, storedByteCount == 0, dataChecksum == 0 else {
                throw .invalidField(
                    name: "zero block's stored size", value: UInt64(storedByteCount))
            }
            return
        case .raw:
            guard storedByteCount == blockByteCount else {
                throw .invalidField(name: "raw block's stored size", value: UInt64(storedByteCount))
            }
        case .lz4:
            // Fewer bytes than the block: otherwise it is stored raw. This also keeps the stored
            // bytes under LZ4_compressBound and lets a reader decompress in place.
            guard storedByteCount > 0, storedByteCount < blockByteCount else {
                throw .invalidField(name: "LZ4 block's stored size", value: UInt64(storedByteCount))
            }
        }
        guard dataByteOffset >= dataRange.lowerBound, dataByteOffset <= dataRange.upperBound,
            UInt64(storedByteCount) <= dataRange.upperBound - dataByteOffset
        else {
            throw .invalidField(name: "block data offset", value: dataByteOffset)
        }
    }

    /// The end of the stored bytes in the file.
    public var dataEndByteOffset: UInt64 { dataByteOffset + UInt64(storedByteCount) }

    /// Writes the entry for block `blockIndex`, with its checksum, into `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer, blockIndex: UInt64) {
        precondition(bytes.count >= Self.byteCount, "an index entry is 32 bytes")
        let flags: UInt32 =
            switch storage {
            case .lz4: 0
            case .raw: Flag.raw
            case .zero: Flag.zero
            }
        var writer = LittleEndianWriter(bytes)
        writer.write(dataByteOffset)
        writer.write(storedByteCount)
        writer.write(flags)
        writer.write(dataChecksum)
        writer.write(Self.entryChecksum(of: UnsafeRawBufferPointer(bytes), blockIndex: blockIndex))
        precondition(writer.byteOffset == Self.byteCount, "the fields fill the entry")
    }

    /// XXH3-64 of the entry's bytes before the entry checksum, seeded with the block index.
    static func entryChecksum(of bytes: UnsafeRawBufferPointer, blockIndex: UInt64) -> UInt64 {
        XXH3_64bits_withSeed(bytes.baseAddress, checksummedByteCount, blockIndex)
    }
}
