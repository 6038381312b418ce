// The block size of a compressed image: a power-of-two unit (PowerOfTwoGeometry) with the
// names the image's code reads in (block index, block count), and the short last block.

/// The uncompressed size of one block of a compressed image: a power of two, 16 KiB to 1 MiB.
public enum LZ4Block: PowerOfTwoUnit {
    /// Smallest block: below it LZ4 finds too few matches and the index grows (32 bytes a block).
    public static let minimumShift: UInt32 = 14
    /// Largest block: a 4 KiB random read decompresses the whole block it falls in.
    public static let maximumShift: UInt32 = 20
    /// The default, chosen by measurement (docs/FORMAT.md, "Compressed block size"): 16 KiB,
    /// compressed against the image's shared dictionary, at which LZ4 HC stays within 10% of
    /// a zstd qcow2 while a random 4 KiB read decompresses at most 16 KiB.
    public static let defaultShift: UInt32 = 14
    public static let sizeName = "block size"
    public static let rangeText = "16 KiB to 1 MiB"
}

/// The block size of a compressed image, with its shift.
public typealias LZ4BlockGeometry = PowerOfTwoGeometry<LZ4Block>

extension PowerOfTwoGeometry where Unit == LZ4Block {
    /// Accepts a block size in bytes if it is a supported power of two.
    public init(blockByteCount: UInt64) throws(FormatError) {
        try self.init(unitByteCount: blockByteCount)
    }

    /// Uncompressed bytes in one block (the last block of an image may hold fewer).
    @inlinable public var blockByteCount: UInt64 { unitByteCount }

    /// The block that holds virtual byte `byteOffset`.
    @inlinable
    public func blockIndex(containing byteOffset: UInt64) -> UInt64 {
        unitIndex(containing: byteOffset)
    }

    /// The virtual byte offset where block `blockIndex` starts.
    @inlinable
    public func byteOffset(ofBlock blockIndex: UInt64) -> UInt64 { byteOffset(ofUnit: blockIndex) }

    /// The number of blocks needed to cover `byteCount` bytes (the last may be partial).
    @inlinable
    public func blockCount(covering byteCount: UInt64) -> UInt64 { unitCount(covering: byteCount) }

    /// Uncompressed bytes in block `blockIndex` of an image of `virtualByteCount` bytes: the
    /// block size, or less for the last block.
    @inlinable
    public func byteCount(ofBlock blockIndex: UInt64, virtualByteCount: UInt64) -> Int {
        let start = byteOffset(ofBlock: blockIndex)
        precondition(start < virtualByteCount, "block index past the end of the image")
        return Int(min(blockByteCount, virtualByteCount - start))
    }
}
