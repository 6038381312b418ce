// The chunk size of a store: a power-of-two unit (PowerOfTwoGeometry) with the names the
// store's code reads in (chunk index, chunk count).

/// The unit the COW store tracks: a power of two from 4 KiB to 1 MiB.
public enum StoreChunk: PowerOfTwoUnit {
    /// Smallest chunk size: one page, so aligned 4 KiB writes never copy up.
    public static let minimumShift: UInt32 = 12
    /// Largest chunk size: 1 MiB.
    public static let maximumShift: UInt32 = 20
    /// The default, chosen by measurement (docs/FORMAT.md, "Chunk size"): 4 KiB.
    public static let defaultShift: UInt32 = 12
    public static let sizeName = "chunk size"
    public static let rangeText = "4 KiB to 1 MiB"
}

/// The chunk size of a store, with its shift and mask.
public typealias ChunkGeometry = PowerOfTwoGeometry<StoreChunk>

extension PowerOfTwoGeometry where Unit == StoreChunk {
    /// Accepts a chunk size in bytes if it is a supported power of two.
    public init(chunkByteCount: UInt64) throws(FormatError) {
        try self.init(unitByteCount: chunkByteCount)
    }

    /// Bytes in one chunk.
    @inlinable public var chunkByteCount: UInt64 { unitByteCount }

    /// The chunk that holds virtual byte `byteOffset`.
    @inlinable
    public func chunkIndex(containing byteOffset: UInt64) -> UInt64 {
        unitIndex(containing: byteOffset)
    }

    /// The virtual byte offset where chunk `chunkIndex` starts.
    @inlinable
    public func byteOffset(ofChunk chunkIndex: UInt64) -> UInt64 { byteOffset(ofUnit: chunkIndex) }

    /// The number of chunks needed to cover `byteCount` bytes (the last may be partial).
    @inlinable
    public func chunkCount(covering byteCount: UInt64) -> UInt64 { unitCount(covering: byteCount) }
}
