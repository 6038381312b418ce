// The block size of a compressed image, kept as a power of two with its shift, and the one
// place that converts between byte offsets, block indexes and block sizes. No I/O.

/// The uncompressed size of one block of a compressed image: a power of two, 16 KiB to 1 MiB.
public struct LZ4BlockGeometry: Equatable, Sendable {
    /// Smallest block: below it LZ4 finds too few matches and the index grows (32 bytes a block).
    public static let minimumShift: UInt32 = 14
    /// Largest block: a 4 KiB random read decompresses the whole block it falls in.
    public static let maximumShift: UInt32 = 20
    /// The default, chosen by measurement (docs/FORMAT.md, "Compressed block size"): 256 KiB,
    /// the smallest block at which LZ4 HC comes within 10% of a zstd qcow2.
    public static let defaultShift: UInt32 = 18

    /// log2 of the block size.
    public let shift: UInt32
    /// Uncompressed bytes in one block (the last block of an image may hold fewer).
    public var blockByteCount: UInt64 { 1 << UInt64(shift) }

    /// Accepts a shift within the supported range.
    public init(shift: UInt32) throws(FormatError) {
        guard shift >= Self.minimumShift && shift <= Self.maximumShift else {
            throw .invalidField(name: "block size shift", value: UInt64(shift))
        }
        self.shift = shift
    }

    /// Accepts a block size in bytes if it is a supported power of two.
    public init(blockByteCount: UInt64) throws(FormatError) {
        guard blockByteCount > 0 && blockByteCount & (blockByteCount - 1) == 0 else {
            throw .invalidField(name: "block size (not a power of two)", value: blockByteCount)
        }
        let shift = UInt32(blockByteCount.trailingZeroBitCount)
        guard shift >= Self.minimumShift && shift <= Self.maximumShift else {
            throw .invalidField(name: "block size (16 KiB to 1 MiB)", value: blockByteCount)
        }
        self.shift = shift
    }

    /// The block that holds virtual byte `byteOffset`.
    @inlinable
    public func blockIndex(containing byteOffset: UInt64) -> UInt64 { byteOffset >> UInt64(shift) }

    /// The virtual byte offset where block `blockIndex` starts.
    @inlinable
    public func byteOffset(ofBlock blockIndex: UInt64) -> UInt64 { blockIndex << UInt64(shift) }

    /// The number of blocks needed to cover `byteCount` bytes (the last may be partial).
    @inlinable
    public func blockCount(covering byteCount: UInt64) -> UInt64 {
        (byteCount >> UInt64(shift)) + (byteCount & (blockByteCount - 1) == 0 ? 0 : 1)
    }

    /// Uncompressed bytes in block `blockIndex` of an image of `virtualByteCount` bytes: the
    /// block size, or less for the last block.
    @inlinable
    public func byteCount(ofBlock blockIndex: UInt64, virtualByteCount: UInt64) -> Int {
        let start = byteOffset(ofBlock: blockIndex)
        precondition(start < virtualByteCount, "block index past the end of the image")
        return Int(min(blockByteCount, virtualByteCount - start))
    }
}
