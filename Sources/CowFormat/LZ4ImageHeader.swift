// The 128-byte record that opens and closes a compressed image (docs/FORMAT.md, "Compressed
// base image"): parse, validate, encode; version 2 adds the shared dictionary's size and
// checksum, version 1 still parses. The block index, dictionary and blocks are elsewhere. No I/O.

/// The header of a cowbd-lz4 image. The same 128 bytes end the file as its footer, so a
/// truncated or half-written image is refused.
public struct LZ4ImageHeader: Equatable, Sendable {
    /// "COWBDLZ4": the first 8 bytes of every compressed image (and of its footer).
    public static let magic: [UInt8] = Array("COWBDLZ4".utf8)
    /// The format version this build writes: 2, with the dictionary fields.
    public static let currentVersion: UInt32 = 2
    /// The versions this build reads: 1 (no dictionary: its bytes 100..119 are reserved) and 2.
    public static let readableVersions: ClosedRange<UInt32> = 1...2
    /// Largest shared dictionary: LZ4 looks back at most 64 KiB.
    public static let maxDictionaryByteCount: UInt32 = 64 << 10
    /// Bytes in the record, including its trailing checksum.
    public static let recordByteCount = 128
    /// Where the block index starts: the record padded to a page, so blocks never share it.
    public static let indexByteOffset: UInt64 = 4096
    /// The data region starts at a multiple of this.
    public static let dataAlignment: UInt64 = 4096
    /// Largest image: 2^60 bytes, as for a store (offsets stay far from overflow).
    public static let maxVirtualByteCount: UInt64 = 1 << 60
    /// Incompatible feature bits this build understands (none yet).
    public static let knownIncompatibleFeatures: UInt32 = 0
    /// Largest block index: open reads it whole into memory, so a header (of a sparse file,
    /// say) must not make it allocate more. 2 GiB is 2^26 blocks: 1 TiB of 16 KiB blocks,
    /// 16 TiB of the default 256 KiB.
    public static let maxIndexByteCount: UInt64 = 1 << 31
    /// Largest compression level recorded: LZ4HC_CLEVEL_MAX.
    public static let maxCompressionLevel: UInt32 = 12

    enum Field {
        static let version = 8
        static let recordByteCount = 12
        static let blockShift = 16
        static let incompatibleFeatures = 20
        static let virtualByteCount = 24
        static let blockCount = 32
        /// `BaseFingerprint`: low u64 at 40, high u64 at 48.
        static let fingerprint = 40
        static let fingerprintScheme = 56
        static let compatibleFeatures = 60
        static let indexByteOffset = 64
        static let indexByteCount = 72
        static let dataByteOffset = 80
        static let fileByteCount = 88
        static let compressionLevel = 96
        static let dictionaryByteCount = 100
        static let dictionaryChecksum = 104
        /// Where the reserved bytes start: after the dictionary fields in version 2, at them
        /// in version 1.
        static func reservedStart(version: UInt32) -> Int { version == 1 ? 100 : 112 }
    }

    public var version: UInt32
    public var geometry: LZ4BlockGeometry
    public var incompatibleFeatures: UInt32
    public var compatibleFeatures: UInt32
    /// Uncompressed size of the image in bytes: the size of the disk it holds.
    public var virtualByteCount: UInt64
    /// The fingerprint of the uncompressed bytes, the same a raw copy of them has.
    public var fingerprint: BaseFingerprint
    /// Which sampling plan produced the fingerprint (`BaseFingerprintPlan.scheme`).
    public var fingerprintScheme: UInt32
    public var indexByteOffset: UInt64
    public var indexByteCount: UInt64
    public var dataByteOffset: UInt64
    /// The whole file's size: the footer ends it.
    public var fileByteCount: UInt64
    /// 0 for LZ4's fast compressor, else the LZ4 HC level used. Informational.
    public var compressionLevel: UInt32
    /// Bytes of the dictionary every LZ4 block is compressed against, stored at
    /// `dataByteOffset`; 0 for none (always 0 in version 1).
    public var dictionaryByteCount: UInt32
    /// XXH3-64 of the dictionary's bytes (`dictionaryChecksum(of:)`); 0 without a dictionary.
    public var dictionaryChecksum: UInt64

    /// Blocks covering the image.
    public var blockCount: UInt64 { geometry.blockCount(covering: virtualByteCount) }
    /// Where the blocks' bytes start: after the dictionary, which opens the data region.
    public var blockDataByteOffset: UInt64 { dataByteOffset + UInt64(dictionaryByteCount) }
    /// Where the footer starts, and so where block data must end.
    public var footerByteOffset: UInt64 { fileByteCount - UInt64(Self.recordByteCount) }

    /// A new header with the layout derived from the sizes.
    public init(
        geometry: LZ4BlockGeometry, virtualByteCount: UInt64, fingerprint: BaseFingerprint,
        compressionLevel: UInt32, fileByteCount: UInt64, dictionaryByteCount: UInt32 = 0,
        dictionaryChecksum: UInt64 = 0
    ) throws(FormatError) {
        version = Self.currentVersion
        self.geometry = geometry
        incompatibleFeatures = 0
        compatibleFeatures = 0
        self.virtualByteCount = virtualByteCount
        self.fingerprint = fingerprint
        fingerprintScheme = BaseFingerprintPlan.scheme
        let layout = Self.layout(geometry: geometry, virtualByteCount: virtualByteCount)
        indexByteOffset = layout.indexByteOffset
        indexByteCount = layout.indexByteCount
        dataByteOffset = layout.dataByteOffset
        self.fileByteCount = fileByteCount
        self.compressionLevel = compressionLevel
        self.dictionaryByteCount = dictionaryByteCount
        self.dictionaryChecksum = dictionaryChecksum
        try validate()
    }

    /// Where the index and the data region go for an image of this size.
    public static func layout(geometry: LZ4BlockGeometry, virtualByteCount: UInt64) -> (
        indexByteOffset: UInt64, indexByteCount: UInt64, dataByteOffset: UInt64
    ) {
        let indexByteCount =
            geometry.blockCount(covering: virtualByteCount) * UInt64(LZ4BlockEntry.byteCount)
        let dataByteOffset = roundUp(indexByteOffset + indexByteCount, toMultipleOf: dataAlignment)
        return (indexByteOffset, indexByteCount, dataByteOffset)
    }

    /// Parses and validates the first `recordByteCount` bytes of `bytes`.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        try Self.record.check(bytes)
        let storedVersion = bytes.loadLittleEndian(at: Field.version, as: UInt32.self)
        guard Self.readableVersions.contains(storedVersion) else {
            throw .unsupportedVersion(storedVersion)
        }
        version = try Self.record.checkVersionAndSize(bytes, currentVersion: storedVersion)
        geometry = try LZ4BlockGeometry(
            shift: bytes.loadLittleEndian(at: Field.blockShift, as: UInt32.self))
        incompatibleFeatures = bytes.loadLittleEndian(
            at: Field.incompatibleFeatures, as: UInt32.self)
        compatibleFeatures = bytes.loadLittleEndian(at: Field.compatibleFeatures, as: UInt32.self)
        virtualByteCount = bytes.loadLittleEndian(at: Field.virtualByteCount, as: UInt64.self)
        fingerprint = BaseFingerprint(loadingFrom: bytes, at: Field.fingerprint)
        fingerprintScheme = bytes.loadLittleEndian(at: Field.fingerprintScheme, as: UInt32.self)
        indexByteOffset = bytes.loadLittleEndian(at: Field.indexByteOffset, as: UInt64.self)
        indexByteCount = bytes.loadLittleEndian(at: Field.indexByteCount, as: UInt64.self)
        dataByteOffset = bytes.loadLittleEndian(at: Field.dataByteOffset, as: UInt64.self)
        fileByteCount = bytes.loadLittleEndian(at: Field.fileByteCount, as: UInt64.self)
        compressionLevel = bytes.loadLittleEndian(at: Field.compressionLevel, as: UInt32.self)
        let reservedStart = Field.reservedStart(version: version)
        if version == 1 {
            dictionaryByteCount = 0
            dictionaryChecksum = 0
        } else {
            dictionaryByteCount = bytes.loadLittleEndian(
                at: Field.dictionaryByteCount, as: UInt32.self)
            dictionaryChecksum = bytes.loadLittleEndian(
                at: Field.dictionaryChecksum, as: UInt64.self)
        }
        try Self.record.checkReserved(bytes, reservedStart..<Self.record.checksumByteOffset)
        let storedBlockCount = bytes.loadLittleEndian(at: Field.blockCount, as: UInt64.self)
        try validate()
        guard storedBlockCount == blockCount else {
            throw .invalidField(name: "block count", value: storedBlockCount)
        }
    }

    /// Checks the relations between fields; run after parsing and before encoding.
    public func validate() throws(FormatError) {
        guard incompatibleFeatures & ~Self.knownIncompatibleFeatures == 0 else {
            throw .unknownIncompatibleFeatures(incompatibleFeatures)
        }
        guard virtualByteCount > 0, virtualByteCount <= Self.maxVirtualByteCount else {
            throw .invalidField(name: "virtual size", value: virtualByteCount)
        }
        guard fingerprintScheme == BaseFingerprintPlan.scheme else {
            throw .invalidField(name: "fingerprint scheme", value: UInt64(fingerprintScheme))
        }
        let layout = Self.layout(geometry: geometry, virtualByteCount: virtualByteCount)
        guard indexByteOffset == layout.indexByteOffset else {
            throw .invalidField(name: "index offset", value: indexByteOffset)
        }
        guard indexByteCount == layout.indexByteCount else {
            throw .invalidField(name: "index size", value: indexByteCount)
        }
        guard indexByteCount <= Self.maxIndexByteCount else {
            throw .invalidField(
                name: "index size (more than \(Self.maxIndexByteCount >> 30) GiB: too many blocks)",
                value: indexByteCount)
        }
        guard dataByteOffset == layout.dataByteOffset else {
            throw .invalidField(name: "data offset", value: dataByteOffset)
        }
        guard dictionaryByteCount <= Self.maxDictionaryByteCount else {
            throw .invalidField(name: "dictionary size", value: UInt64(dictionaryByteCount))
        }
        guard dictionaryByteCount > 0 || dictionaryChecksum == 0 else {
            throw .invalidField(
                name: "dictionary checksum (no dictionary)", value: dictionaryChecksum)
        }
        // Block data cannot outgrow its input by more than the footer: a block that does not
        // compress is stored raw. So the file size is bounded by the image's, plus overhead.
        let smallest = blockDataByteOffset + UInt64(Self.recordByteCount)
        guard fileByteCount >= smallest, fileByteCount - smallest <= virtualByteCount else {
            throw .invalidField(name: "file size", value: fileByteCount)
        }
        guard compressionLevel <= Self.maxCompressionLevel else {
            throw .invalidField(name: "compression level", value: UInt64(compressionLevel))
        }
    }

    /// Writes the record, with its checksum, into the first `recordByteCount` bytes.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        Self.record.encode(into: bytes, encodeFields(into:))
    }

    /// The encoded record as a byte array.
    public func encoded() -> [UInt8] { Self.record.encoded(encodeFields(into:)) }

    /// The record's frame: magic, fields, checksum at 120.
    static let record = ChecksummedRecord(
        magic: magic, byteCount: recordByteCount, kindName: "cowbd-lz4 image")

    private func encodeFields(into record: UnsafeMutableRawBufferPointer) {
        record.storeLittleEndian(version, at: Field.version)
        record.storeLittleEndian(UInt32(Self.recordByteCount), at: Field.recordByteCount)
        record.storeLittleEndian(geometry.shift, at: Field.blockShift)
        record.storeLittleEndian(incompatibleFeatures, at: Field.incompatibleFeatures)
        record.storeLittleEndian(virtualByteCount, at: Field.virtualByteCount)
        record.storeLittleEndian(blockCount, at: Field.blockCount)
        fingerprint.store(into: record, at: Field.fingerprint)
        record.storeLittleEndian(fingerprintScheme, at: Field.fingerprintScheme)
        record.storeLittleEndian(compatibleFeatures, at: Field.compatibleFeatures)
        record.storeLittleEndian(indexByteOffset, at: Field.indexByteOffset)
        record.storeLittleEndian(indexByteCount, at: Field.indexByteCount)
        record.storeLittleEndian(dataByteOffset, at: Field.dataByteOffset)
        record.storeLittleEndian(fileByteCount, at: Field.fileByteCount)
        record.storeLittleEndian(compressionLevel, at: Field.compressionLevel)
        if version != 1 {
            record.storeLittleEndian(dictionaryByteCount, at: Field.dictionaryByteCount)
            record.storeLittleEndian(dictionaryChecksum, at: Field.dictionaryChecksum)
        }
    }

    /// The checksum of a dictionary's bytes: XXH3-64, seed 0, as for a block's stored bytes.
    public static func dictionaryChecksum(of dictionary: UnsafeRawBufferPointer) -> UInt64 {
        LZ4BlockEntry.dataChecksum(of: dictionary)
    }
}
