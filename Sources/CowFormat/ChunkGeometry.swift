// The chunk size of a store, kept as a power of two with its shift and mask, and the
// one place that converts between byte offsets, chunk indexes and chunk counts.

/// The size of the unit the COW store tracks: a power of two from 4 KiB to 1 MiB.
public struct ChunkGeometry: Equatable, Sendable {
    /// Smallest chunk size: one page, so aligned 4 KiB writes never copy up.
    public static let minimumShift: UInt32 = 12
    /// Largest chunk size: 1 MiB.
    public static let maximumShift: UInt32 = 20
    /// The default, chosen by measurement (docs/FORMAT.md, "Chunk size"): 4 KiB.
    public static let defaultShift: UInt32 = 12

    /// log2 of the chunk size.
    public let shift: UInt32
    /// Bytes in one chunk.
    public var chunkByteCount: UInt64 { 1 << UInt64(shift) }
    /// `chunkByteCount - 1`: the offset-in-chunk bits.
    public var offsetMask: UInt64 { chunkByteCount - 1 }

    /// Accepts a shift within the supported range.
    public init(shift: UInt32) throws(FormatError) {
        guard shift >= Self.minimumShift && shift <= Self.maximumShift else {
            throw .invalidField(name: "chunk size shift", value: UInt64(shift))
        }
        self.shift = shift
    }

    /// Accepts a chunk size in bytes if it is a supported power of two.
    public init(chunkByteCount: UInt64) throws(FormatError) {
        guard chunkByteCount > 0 && chunkByteCount & (chunkByteCount - 1) == 0 else {
            throw .invalidField(name: "chunk size (not a power of two)", value: chunkByteCount)
        }
        let shift = UInt32(chunkByteCount.trailingZeroBitCount)
        guard shift >= Self.minimumShift && shift <= Self.maximumShift else {
            throw .invalidField(name: "chunk size (4 KiB to 1 MiB)", value: chunkByteCount)
        }
        self.shift = shift
    }

    /// The chunk that holds virtual byte `byteOffset`.
    @inlinable
    public func chunkIndex(containing byteOffset: UInt64) -> UInt64 { byteOffset >> UInt64(shift) }

    /// The virtual byte offset where chunk `chunkIndex` starts.
    @inlinable
    public func byteOffset(ofChunk chunkIndex: UInt64) -> UInt64 { chunkIndex << UInt64(shift) }

    /// The number of chunks needed to cover `byteCount` bytes (the last may be partial).
    @inlinable
    public func chunkCount(covering byteCount: UInt64) -> UInt64 {
        (byteCount >> UInt64(shift)) + (byteCount & offsetMask == 0 ? 0 : 1)
    }
}

/// Rounds `value` up to a multiple of `alignment`, a power of two.
@inlinable
public func roundUp(_ value: UInt64, toMultipleOf alignment: UInt64) -> UInt64 {
    precondition(alignment > 0 && alignment & (alignment - 1) == 0)
    return (value + alignment - 1) & ~(alignment - 1)
}
