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

    /// Parses a whole record: magic, checksum, version, then the reserved bytes (zero).
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        guard bytes.count == Self.byteCount else {
            throw .truncated(expectedByteCount: Self.byteCount, actualByteCount: bytes.count)
        }
        try Self.record.check(bytes)
        var reader = LittleEndianReader(bytes, at: Self.magic.count)
        let version: UInt32 = reader.read()
        guard version == Self.version else { throw .unsupportedVersion(version) }
        let reservedWord = reader.byteOffset..<reader.byteOffset + 4
        reader.skip(UInt32.self)
        diffByteCount = reader.read()
        diffDigest = reader.read()
        targetDevice = reader.read()
        targetInode = reader.read()
        targetByteCountBefore = reader.read()
        for reserved in [reservedWord, reader.byteOffset..<Self.record.checksumByteOffset] {
            try Self.record.checkReserved(bytes, reserved, name: "import record reserved byte")
        }
    }

    /// The record's frame: magic, fields (version u32, a reserved u32, then the five u64 fields
    /// in the order above, 16 to 56), reserved bytes, checksum at 120.
    static let record = ChecksummedRecord(
        magic: magic, byteCount: byteCount, kindName: "cowbd import record")

    /// The record's bytes, checksum included.
    public func encoded() -> [UInt8] {
        Self.record.encoded { bytes in
            var writer = LittleEndianWriter(bytes, at: Self.magic.count)
            writer.write(Self.version)
            writer.skip(UInt32.self)  // reserved
            writer.write(diffByteCount)
            writer.write(diffDigest)
            writer.write(targetDevice)
            writer.write(targetInode)
            writer.write(targetByteCountBefore)
        }
    }

    /// Whether this record names the same diff as `other` (size and digest).
    public func isForSameDiff(as other: ImportRecord) -> Bool {
        diffByteCount == other.diffByteCount && diffDigest == other.diffDigest
    }
}
