// The record `import-diff` keeps beside its target while it writes, so an interrupted import is
// recognised and finished by running it again (docs/FORMAT.md, "Applying a diff"). A value with
// its byte layout; where the file lives and when it is written is CowStore's.

/// Which diff is being applied to which target.
public struct ImportRecord: Equatable, Sendable {
    public static let magic: [UInt8] = Array("COWBDIMP".utf8)
    public static let version: UInt32 = 1
    /// The whole record, checksum included.
    public static let byteCount = 128

    /// Size of the diff in bytes.
    public var diffByteCount: UInt64
    /// XXH3-64 of the XXH3-64 digests of the diff's 1 MiB blocks, laid end to end (u64 LE): the
    /// diff's identity.
    public var diffDigest: UInt64
    /// The target's `st_dev` and `st_ino`; for a block device, its `st_rdev` and 0.
    public var targetDevice: UInt64
    public var targetInode: UInt64
    /// The target's size before the import wrote anything (a raw file may be grown).
    public var targetByteCountBefore: UInt64

    public init(
        diffByteCount: UInt64, diffDigest: UInt64, targetDevice: UInt64, targetInode: UInt64,
        targetByteCountBefore: UInt64
    ) {
        self.diffByteCount = diffByteCount
        self.diffDigest = diffDigest
        self.targetDevice = targetDevice
        self.targetInode = targetInode
        self.targetByteCountBefore = targetByteCountBefore
    }

    enum Field {
        static let version = 8
        static let reserved = 12
        static let diffByteCount = 16
        static let diffDigest = 24
        static let targetDevice = 32
        static let targetInode = 40
        static let targetByteCountBefore = 48
        static let reservedTail = 56
    }

    /// Parses a whole record: magic, checksum, version, then the reserved bytes (zero).
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        guard bytes.count == Self.byteCount else {
            throw .truncated(expectedByteCount: Self.byteCount, actualByteCount: bytes.count)
        }
        try Self.record.check(bytes)
        let version = bytes.loadLittleEndian(at: Field.version, as: UInt32.self)
        guard version == Self.version else { throw .unsupportedVersion(version) }
        for reserved in [
            Field.reserved..<Field.diffByteCount,
            Field.reservedTail..<Self.record.checksumByteOffset,
        ] {
            try Self.record.checkReserved(bytes, reserved, name: "import record reserved byte")
        }
        diffByteCount = bytes.loadLittleEndian(at: Field.diffByteCount, as: UInt64.self)
        diffDigest = bytes.loadLittleEndian(at: Field.diffDigest, as: UInt64.self)
        targetDevice = bytes.loadLittleEndian(at: Field.targetDevice, as: UInt64.self)
        targetInode = bytes.loadLittleEndian(at: Field.targetInode, as: UInt64.self)
        targetByteCountBefore = bytes.loadLittleEndian(
            at: Field.targetByteCountBefore, as: UInt64.self)
    }

    /// The record's frame: magic, fields, checksum at 120.
    static let record = ChecksummedRecord(
        magic: magic, byteCount: byteCount, kindName: "cowbd import record")

    /// The record's bytes, checksum included.
    public func encoded() -> [UInt8] {
        Self.record.encoded { bytes in
            bytes.storeLittleEndian(Self.version, at: Field.version)
            bytes.storeLittleEndian(diffByteCount, at: Field.diffByteCount)
            bytes.storeLittleEndian(diffDigest, at: Field.diffDigest)
            bytes.storeLittleEndian(targetDevice, at: Field.targetDevice)
            bytes.storeLittleEndian(targetInode, at: Field.targetInode)
            bytes.storeLittleEndian(targetByteCountBefore, at: Field.targetByteCountBefore)
        }
    }

    /// Whether this record names the same diff as `other` (size and digest).
    public func isForSameDiff(as other: ImportRecord) -> Bool {
        diffByteCount == other.diffByteCount && diffDigest == other.diffDigest
    }
}
