// The fields that a store header and a compressed image's header keep at the same offsets,
// bytes 8 to 88 (docs/FORMAT.md, "Store header" and "Compressed base image"), and the encoding
// of both headers: parsed, encoded and checked here once for both. The frame is
// ChecksummedRecord's; the fields outside 8 to 88 are each header's.

/// A header whose bytes 8 to 88 are `ImageHeaderFields`: the store header and the compressed
/// image header. The extension below names those fields on the header itself, read-only: a
/// header changes as a whole, through its own methods (or `fields`, to build a bad one).
public protocol ImageHeader {
    /// The unit the header's shift sizes: a store's chunk, an image's block.
    associatedtype Unit: PowerOfTwoUnit
    /// The shared fields.
    var fields: ImageHeaderFields<Unit> { get set }
    /// The header's frame: its magic, its size and where its checksum is.
    static var record: ChecksummedRecord { get }
    /// Stores the header's own fields, those outside bytes 8 to 88, into its zeroed record;
    /// `encode(into:)` writes the rest.
    func encodeOwnFields(into record: UnsafeMutableRawBufferPointer)
}

extension ImageHeader {
    /// Writes the header, with its checksum, into the first `record.byteCount` bytes.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        Self.record.encode(into: bytes, encodeFields(into:))
    }

    /// The encoded header as a byte array (for tests and one-off writes).
    public func encoded() -> [UInt8] { Self.record.encoded(encodeFields(into:)) }

    private func encodeFields(into record: UnsafeMutableRawBufferPointer) {
        fields.encode(into: record, record: Self.record)
        encodeOwnFields(into: record)
    }

    /// The format version the header was written in.
    @inlinable public var version: UInt32 { fields.version }
    /// The unit size, from the shift at offset 16.
    @inlinable public var geometry: PowerOfTwoGeometry<Unit> { fields.geometry }
    /// Feature bits a reader must understand.
    @inlinable public var incompatibleFeatures: UInt32 { fields.incompatibleFeatures }
    /// Feature bits a reader may ignore.
    @inlinable public var compatibleFeatures: UInt32 { fields.compatibleFeatures }
    /// Size of the disk in bytes.
    @inlinable public var virtualByteCount: UInt64 { fields.virtualByteCount }
    /// Which sampling plan produced the fingerprint (`BaseFingerprintPlan.scheme`).
    @inlinable public var fingerprintScheme: UInt32 { fields.fingerprintScheme }
    /// Where the data region starts.
    @inlinable public var dataByteOffset: UInt64 { fields.dataByteOffset }
}

/// Bytes 8 to 88 of a store header or a compressed image header. The map is the region after
/// the header that says where each unit's bytes are: a store's chunk bitmap, an image's block
/// index.
public struct ImageHeaderFields<Unit: PowerOfTwoUnit>: Equatable, Sendable {
    public var version: UInt32
    public var geometry: PowerOfTwoGeometry<Unit>
    public var incompatibleFeatures: UInt32
    public var compatibleFeatures: UInt32
    public var virtualByteCount: UInt64
    /// A store's base fingerprint; an image's, of its uncompressed bytes.
    public var fingerprint: BaseFingerprint
    public var fingerprintScheme: UInt32
    public var mapByteOffset: UInt64
    public var mapByteCount: UInt64
    public var dataByteOffset: UInt64

    /// The fields of a new header: no feature bits, and the regions where `layout` (map offset,
    /// map size, data offset: the header's `layout(geometry:virtualByteCount:)`) puts them.
    init(
        version: UInt32, geometry: PowerOfTwoGeometry<Unit>, virtualByteCount: UInt64,
        fingerprint: BaseFingerprint, fingerprintScheme: UInt32, layout: (UInt64, UInt64, UInt64)
    ) {
        self.version = version
        self.geometry = geometry
        incompatibleFeatures = 0
        compatibleFeatures = 0
        self.virtualByteCount = virtualByteCount
        self.fingerprint = fingerprint
        self.fingerprintScheme = fingerprintScheme
        (mapByteOffset, mapByteCount, dataByteOffset) = layout
    }

    /// Parses the fields of a header framed as `record`: first the frame (size, magic,
    /// checksum), then a version in `readableVersions`, the recorded header size
    /// (`record.byteCount`), then a shift within the unit's range.
    init(
        parsing bytes: UnsafeRawBufferPointer, record: ChecksummedRecord,
        readableVersions: ClosedRange<UInt32>
    ) throws(FormatError) {
        try record.check(bytes)
        var reader = LittleEndianReader(bytes, at: Self.startByteOffset)
        version = reader.read()
        guard readableVersions.contains(version) else { throw .unsupportedVersion(version) }
        let headerByteCount: UInt32 = reader.read()
        guard headerByteCount == UInt32(record.byteCount) else {
            throw .invalidField(name: "header size", value: UInt64(headerByteCount))
        }
        geometry = try PowerOfTwoGeometry(shift: reader.read())
        incompatibleFeatures = reader.read()
        virtualByteCount = reader.read()
        // Bytes 32..<40 are the header's own: a store's base size, an image's block count.
        reader.skip(UInt64.self)
        fingerprint = BaseFingerprint(reading: &reader)
        fingerprintScheme = reader.read()
        compatibleFeatures = reader.read()
        mapByteOffset = reader.read()
        mapByteCount = reader.read()
        dataByteOffset = reader.read()
        precondition(reader.byteOffset == Self.endByteOffset, "the fields end at 88")
    }

    /// Stores the fields into a record of `record`'s kind, as `init(parsing:)` reads them.
    func encode(into bytes: UnsafeMutableRawBufferPointer, record: ChecksummedRecord) {
        var writer = LittleEndianWriter(bytes, at: Self.startByteOffset)
        writer.write(version)
        writer.write(UInt32(record.byteCount))
        writer.write(geometry.shift)
        writer.write(incompatibleFeatures)
        writer.write(virtualByteCount)
        writer.skip(UInt64.self)  // 32..<40: the header's own, which it writes itself
        fingerprint.write(to: &writer)
        writer.write(fingerprintScheme)
        writer.write(compatibleFeatures)
        writer.write(mapByteOffset)
        writer.write(mapByteCount)
        writer.write(dataByteOffset)
        precondition(writer.byteOffset == Self.endByteOffset, "the fields end at 88")
    }

    /// Checks what both headers require: only known incompatible features, a virtual size from
    /// 1 to `maxVirtualByteCount`, the current fingerprint scheme, and the regions where
    /// `layout` puts them, as in `init`. `mapName` names the map in errors ("bitmap", "index").
    func validate(
        knownIncompatibleFeatures: UInt32, maxVirtualByteCount: UInt64, mapName: String,
        layout: (UInt64, UInt64, UInt64)
    ) throws(FormatError) {
        let (expectedMapByteOffset, expectedMapByteCount, expectedDataByteOffset) = layout
        guard incompatibleFeatures & ~knownIncompatibleFeatures == 0 else {
            throw .unknownIncompatibleFeatures(incompatibleFeatures)
        }
        guard virtualByteCount > 0, virtualByteCount <= maxVirtualByteCount else {
            throw .invalidField(name: "virtual size", value: virtualByteCount)
        }
        guard fingerprintScheme == BaseFingerprintPlan.scheme else {
            throw .invalidField(name: "fingerprint scheme", value: UInt64(fingerprintScheme))
        }
        guard mapByteOffset == expectedMapByteOffset else {
            throw .invalidField(name: mapName + " offset", value: mapByteOffset)
        }
        guard mapByteCount == expectedMapByteCount else {
            throw .invalidField(name: mapName + " size", value: mapByteCount)
        }
        guard dataByteOffset == expectedDataByteOffset else {
            throw .invalidField(name: "data offset", value: dataByteOffset)
        }
    }
}

extension ImageHeaderFields {
    /// Where the fields start in a header: after the magic. They follow one another in the
    /// order `init(parsing:)` reads them, each as wide as its type (docs/FORMAT.md).
    static var startByteOffset: Int { 8 }
    /// Where the fields end and each header's own fields go on.
    static var endByteOffset: Int { 88 }
}
