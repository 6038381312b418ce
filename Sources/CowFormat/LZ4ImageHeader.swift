// The 128-byte record that opens and closes a compressed image (docs/FORMAT.md, "Compressed
// base image"): parse, validate, encode; version 2 adds the shared dictionary's size and
// checksum, version 1 still parses. The block index, dictionary and blocks are elsewhere. No I/O.

/// The header of a cowbd-lz4 image. The same 128 bytes end the file as its footer, so a
/// truncated or half-written image is refused.
public struct LZ4ImageHeader: ImageHeader, Equatable, Sendable {
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

    /// Where the block count is, among `ImageHeaderFields` (bytes 8 to 88). The image's other
    /// fields follow those, in the order `init(parsing:)` reads them.
    static let blockCountByteOffset = 32

    /// Version, block size, feature bits, the uncompressed size of the image (the size of the
    /// disk it holds), the fingerprint of the uncompressed bytes (the same a raw copy of them
    /// has), and where the block index and the data region are.
    public var fields: ImageHeaderFields<LZ4Block>
    /// The whole file's size: the footer ends it.
    public var fileByteCount: UInt64
    /// 0 for LZ4's fast compressor, else the LZ4 HC level used. Informational.
    public var compressionLevel: UInt32
    /// Bytes of the dictionary every LZ4 block is compressed against, stored at
    /// `dataByteOffset`; 0 for none (always 0 in version 1).
    public var dictionaryByteCount: UInt32
    /// XXH3-64 of the dictionary's bytes (`dictionaryChecksum(of:)`); 0 without a dictionary.
    public var dictionaryChecksum: UInt64

    /// The fingerprint of the uncompressed bytes.
    public var fingerprint: BaseFingerprint { fields.fingerprint }
    /// Where the block index starts (`LZ4ImageHeader.indexByteOffset`).
    public var indexByteOffset: UInt64 { fields.mapByteOffset }
    /// Bytes of the block index: `LZ4BlockEntry.byteCount` a block.
    public var indexByteCount: UInt64 { fields.mapByteCount }

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
        fields = ImageHeaderFields(
            version: Self.currentVersion, geometry: geometry, virtualByteCount: virtualByteCount,
            fingerprint: fingerprint, fingerprintScheme: BaseFingerprintPlan.scheme,
            layout: Self.layout(geometry: geometry, virtualByteCount: virtualByteCount))
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
        fields = try ImageHeaderFields(
            parsing: bytes, record: Self.record, readableVersions: Self.readableVersions)
        var reader = LittleEndianReader(bytes, at: ImageHeaderFields<LZ4Block>.endByteOffset)
        fileByteCount = reader.read()
        compressionLevel = reader.read()
        if fields.version == 1 {
            dictionaryByteCount = 0
            dictionaryChecksum = 0
        } else {
            dictionaryByteCount = reader.read()
            dictionaryChecksum = reader.read()
        }
        // The reserved bytes start after the last field: at 100 in version 1, 112 in version 2.
        try Self.record.checkReserved(bytes, reader.byteOffset..<Self.record.checksumByteOffset)
        let storedBlockCount = bytes.loadLittleEndian(
            at: Self.blockCountByteOffset, as: UInt64.self)
        try validate()
        guard storedBlockCount == blockCount else {
            throw .invalidField(name: "block count", value: storedBlockCount)
        }
    }

    /// Checks the relations between fields; run after parsing and before encoding.
    public func validate() throws(FormatError) {
        try fields.validate(
            knownIncompatibleFeatures: Self.knownIncompatibleFeatures,
            maxVirtualByteCount: Self.maxVirtualByteCount, mapName: "index",
            layout: Self.layout(geometry: geometry, virtualByteCount: virtualByteCount))
        guard indexByteCount <= Self.maxIndexByteCount else {
            throw .invalidField(
                name: "index size (more than \(Self.maxIndexByteCount >> 30) GiB: too many blocks)",
                value: indexByteCount)
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

    /// The record's frame: magic, fields, checksum at 120.
    public static let record = ChecksummedRecord(
        magic: magic, byteCount: recordByteCount, kindName: "cowbd-lz4 image")

    /// Stores the block count, file size, compression level and (from version 2) the
    /// dictionary fields.
    public func encodeOwnFields(into record: UnsafeMutableRawBufferPointer) {
        record.storeLittleEndian(blockCount, at: Self.blockCountByteOffset)
        var writer = LittleEndianWriter(record, at: ImageHeaderFields<LZ4Block>.endByteOffset)
        writer.write(fileByteCount)
        writer.write(compressionLevel)
        if version != 1 {
            writer.write(dictionaryByteCount)
            writer.write(dictionaryChecksum)
        }
    }

    /// The checksum of a dictionary's bytes: XXH3-64, seed 0, as for a block's stored bytes.
    public static func dictionaryChecksum(of dictionary: UnsafeRawBufferPointer) -> UInt64 {
        LZ4BlockEntry.dataChecksum(of: dictionary)
    }
}
