// The records of a cowbd diff stream (docs/FORMAT.md, "Diff stream") and the tags of Ceph's
// rbd diff v1/v2 streams, as values. No I/O: readers and writers live in CowStore.

import CXXHash

/// The 64-byte header that opens a native diff stream.
public struct DiffHeader: Equatable, Sendable {
    public static let magic: [UInt8] = Array("COWBDDIF".utf8)
    public static let currentVersion: UInt32 = 1
    public static let byteCount = 64

    /// Chunk size of the store the diff came from (informational).
    public var chunkByteCount: UInt32
    /// Size of the disk the diff describes.
    public var virtualByteCount: UInt64
    /// Size and fingerprint of the image the diff applies to: the store's base, or for an
    /// incremental diff the disk as it was at the checkpoint.
    public var baseByteCount: UInt64
    public var baseFingerprint: BaseFingerprint
    /// The id of the checkpoint an incremental diff starts from; 0 for a diff of the whole store.
    public var sinceCheckpointID: UInt64

    public init(
        chunkByteCount: UInt32, virtualByteCount: UInt64, baseByteCount: UInt64,
        baseFingerprint: BaseFingerprint, sinceCheckpointID: UInt64 = 0
    ) {
        self.chunkByteCount = chunkByteCount
        self.virtualByteCount = virtualByteCount
        self.baseByteCount = baseByteCount
        self.baseFingerprint = baseFingerprint
        self.sinceCheckpointID = sinceCheckpointID
    }

    /// Parses the first `byteCount` bytes of a native diff; checks magic, version and checksum.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        try Self.record.check(bytes)
        let version = bytes.loadLittleEndian(at: 8, as: UInt32.self)
        guard version == Self.currentVersion else { throw .unsupportedVersion(version) }
        chunkByteCount = bytes.loadLittleEndian(at: 12, as: UInt32.self)
        virtualByteCount = bytes.loadLittleEndian(at: 16, as: UInt64.self)
        baseByteCount = bytes.loadLittleEndian(at: 24, as: UInt64.self)
        baseFingerprint = BaseFingerprint(loadingFrom: bytes, at: 32)
        sinceCheckpointID = bytes.loadLittleEndian(at: 48, as: UInt64.self)
        guard baseByteCount <= virtualByteCount else {
            throw .invalidField(name: "base size", value: baseByteCount)
        }
    }

    /// Writes the header into the first `byteCount` bytes of `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        Self.record.encode(into: bytes) { header in
            header.storeLittleEndian(Self.currentVersion, at: 8)
            header.storeLittleEndian(chunkByteCount, at: 12)
            header.storeLittleEndian(virtualByteCount, at: 16)
            header.storeLittleEndian(baseByteCount, at: 24)
            baseFingerprint.store(into: header, at: 32)
            header.storeLittleEndian(sinceCheckpointID, at: 48)
        }
    }

    /// The header's frame: magic, fields, XXH3-64 checksum at 56.
    static let record = ChecksummedRecord(
        magic: magic, byteCount: byteCount, kindName: "cowbd diff", checksumHash: .xxh3)
}

/// One 32-byte record header of a native diff: a data extent (followed by its bytes), a zero
/// extent, or the trailer that ends the stream.
public struct DiffRecord: Equatable, Sendable {
    public enum Kind: UInt32, Sendable {
        case data = 1
        case zero = 2
        case end = 3
    }

    public static let byteCount = 32

    public var kind: Kind
    /// Data and zero: the extent's first byte. End: the number of data and zero records.
    public var first: UInt64
    /// Data and zero: the extent's length. End: the data bytes in all data records.
    public var second: UInt64
    /// Data and zero: `DiffChecksum.record`. End: the whole-stream checksum.
    public var checksum: UInt64

    public init(kind: Kind, first: UInt64, second: UInt64, checksum: UInt64) {
        self.kind = kind
        self.first = first
        self.second = second
        self.checksum = checksum
    }

    /// Parses a record header; the checksum is the caller's to check (it covers more bytes).
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        guard bytes.count >= Self.byteCount else {
            throw .truncated(expectedByteCount: Self.byteCount, actualByteCount: bytes.count)
        }
        let rawKind = bytes.loadLittleEndian(at: 0, as: UInt32.self)
        guard let kind = Kind(rawValue: rawKind) else {
            throw .invalidField(name: "diff record kind", value: UInt64(rawKind))
        }
        let reserved = bytes.loadLittleEndian(at: 4, as: UInt32.self)
        guard reserved == 0 else {
            throw .invalidField(name: "diff record reserved field", value: UInt64(reserved))
        }
        self.kind = kind
        first = bytes.loadLittleEndian(at: 8, as: UInt64.self)
        second = bytes.loadLittleEndian(at: 16, as: UInt64.self)
        checksum = bytes.loadLittleEndian(at: 24, as: UInt64.self)
    }

    /// Writes the record header into the first `byteCount` bytes of `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.byteCount)
        bytes.storeLittleEndian(kind.rawValue, at: 0)
        bytes.storeLittleEndian(UInt32(0), at: 4)
        bytes.storeLittleEndian(first, at: 8)
        bytes.storeLittleEndian(second, at: 16)
        bytes.storeLittleEndian(checksum, at: 24)
    }
}

/// Streaming XXH3-64 (seed 0), for record and whole-stream checksums.
/// The corresponding C functions are `XXH3_64bits_reset`, `_update` and `_digest`.
public final class DiffChecksum {
    private let state: OpaquePointer

    public init() {
        guard let state = XXH3_createState() else { preconditionFailure("out of memory") }
        self.state = state
        XXH3_64bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    public func reset() { XXH3_64bits_reset(state) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        XXH3_64bits_update(state, bytes.baseAddress, bytes.count)
    }

    public var digest: UInt64 { XXH3_64bits_digest(state) }
}

/// Ceph's rbd diff streams (interop-formats.md): banners and one-byte record tags.
public enum RBDDiff {
    public static let bannerV1: [UInt8] = Array("rbd diff v1\n".utf8)
    public static let bannerV2: [UInt8] = Array("rbd diff v2\n".utf8)
    public static let fromSnapshot = UInt8(ascii: "f")
    public static let toSnapshot = UInt8(ascii: "t")
    public static let isProtected = UInt8(ascii: "p")
    public static let size = UInt8(ascii: "s")
    public static let write = UInt8(ascii: "w")
    public static let zero = UInt8(ascii: "z")
    public static let end = UInt8(ascii: "e")
    /// Longest snapshot name accepted in `f`/`t` records.
    public static let maxNameByteCount: UInt64 = 4096
}
