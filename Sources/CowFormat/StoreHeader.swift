// The 4 KiB header at offset 0 of a COW store, as a value: parse, validate, encode.
// Byte layout and versioning rule: docs/FORMAT.md. No I/O here.

/// The identity of a base image's content: its size and a hash of sampled bytes.
public struct BaseFingerprint: Equatable, Sendable, CustomStringConvertible {
    /// XXH3-128 of the sampled bytes, low 64 bits.
    public var low: UInt64
    /// XXH3-128 of the sampled bytes, high 64 bits.
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// 32 hex digits, high half first, as `info` shows it.
    public var description: String {
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(high) + hex(low)
    }

    /// Reads the fingerprint as the next 16 bytes of a record: `low`, then `high`, each a u64
    /// little-endian.
    init(reading reader: inout LittleEndianReader) {
        low = reader.read()
        high = reader.read()
    }

    /// Writes the fingerprint as the next 16 bytes of a record, as `init(reading:)` reads it.
    func write(to writer: inout LittleEndianWriter) {
        writer.write(low)
        writer.write(high)
    }

    /// Reads the fingerprint stored at `byteOffset` of a record.
    init(loadingFrom bytes: UnsafeRawBufferPointer, at byteOffset: Int) {
        var reader = LittleEndianReader(bytes, at: byteOffset)
        self.init(reading: &reader)
    }

    /// Writes the fingerprint at `byteOffset` of a record, as `init(loadingFrom:at:)` reads it.
    func store(into bytes: UnsafeMutableRawBufferPointer, at byteOffset: Int) {
        var writer = LittleEndianWriter(bytes, at: byteOffset)
        write(to: &writer)
    }
}

/// Header of a COW store file (docs/FORMAT.md, "Store header").
public struct StoreHeader: ImageHeader, Equatable, Sendable {
    /// "COWBDSTR": the first 8 bytes of every store.
    public static let magic: [UInt8] = Array("COWBDSTR".utf8)
    /// The format version this build writes and reads.
    public static let currentVersion: UInt32 = 1
    /// Bytes in the header, including its trailing checksum.
    public static let byteCount = 4096
    /// Longest base path (as given, and resolved) the header can hold.
    public static let maxBasePathByteCount = 1022
    /// The data region starts at a multiple of this, so any chunk size aligns with it.
    public static let dataAlignment: UInt64 = 1 << 20
    /// The bitmap region starts right after the header and is a whole number of pages.
    public static let bitmapAlignment: UInt64 = 4096
    /// Incompatible feature bit: a merge is under way (docs/FORMAT.md, "Merge"). A reader that
    /// does not know merges must not serve such a store, so the bit is incompatible.
    public static let mergeInProgressFeature: UInt32 = 1 << 0
    /// Incompatible feature bit: the file ends with a checkpoint area (docs/FORMAT.md,
    /// "Checkpoints"). A writer that does not know it would change the disk without marking
    /// the checkpoints' bitmaps, so their incremental diffs would miss changes.
    public static let checkpointsFeature: UInt32 = 1 << 1
    /// Incompatible feature bit: the store is a frozen layer (docs/FORMAT.md, "Chains and
    /// snapshots"): other stores are built over its disk, so it must never change. A writer
    /// that does not know the bit would change it, so the bit is incompatible.
    public static let frozenFeature: UInt32 = 1 << 2
    /// Incompatible feature bit: the file ends with a hydration bitmap (docs/FORMAT.md,
    /// "Hydration"). An older reader would take hydrated chunks for the base's, and its
    /// `check --repair` would punch their data as leaked.
    public static let hydrationFeature: UInt32 = 1 << 3
    /// Incompatible feature bits this build understands.
    public static let knownIncompatibleFeatures: UInt32 =
        mergeInProgressFeature | checkpointsFeature | frozenFeature | hydrationFeature

    /// The store's own fields; those at 8 to 88 are `ImageHeaderFields`.
    enum Field {
        static let baseByteCount = 32
        static let createdUnixSeconds = 88
        static let mergeFlags = 96
        static let mergeTargetByteCount = 104
        /// `BaseFingerprint`: low u64 at 112, high u64 at 120.
        static let mergeFingerprint = 112
        static let reservedStart = 128
        static let basePathGiven = 1024
        static let basePathResolved = 2048
        static let mergeTargetPath = 3072
    }

    /// Version, chunk size, feature bits, the virtual disk's size (it may exceed the base: the
    /// tail reads as zeros), the base's fingerprint, and where the bitmap and data regions are.
    public var fields: ImageHeaderFields<StoreChunk>
    /// Size of the base image when the store was bound to it.
    public var baseByteCount: UInt64
    public var createdUnixSeconds: UInt64
    /// The base path as the user gave it (relative paths are relative to the store's folder).
    public var basePathGiven: String
    /// The base path made absolute at create time.
    public var basePathResolved: String
    /// Set while a merge is under way; nil otherwise.
    public var merge: MergeRecord?

    /// The fingerprint of the base the store was bound to.
    public var baseFingerprint: BaseFingerprint { fields.fingerprint }
    /// Where the chunk bitmap starts: right after the header.
    public var bitmapByteOffset: UInt64 { fields.mapByteOffset }
    /// Bytes of the chunk bitmap: a whole number of pages.
    public var bitmapByteCount: UInt64 { fields.mapByteCount }

    /// Number of chunks covering the virtual disk.
    public var chunkCount: UInt64 { geometry.chunkCount(covering: virtualByteCount) }

    /// A new header with the region layout derived from the sizes.
    public init(
        geometry: ChunkGeometry, virtualByteCount: UInt64, baseByteCount: UInt64,
        baseFingerprint: BaseFingerprint, fingerprintScheme: UInt32,
        basePathGiven: String, basePathResolved: String, createdUnixSeconds: UInt64
    ) throws(FormatError) {
        try Self.checkBasePathLengths(basePathGiven, basePathResolved)
        fields = ImageHeaderFields(
            version: Self.currentVersion, geometry: geometry, virtualByteCount: virtualByteCount,
            fingerprint: baseFingerprint, fingerprintScheme: fingerprintScheme,
            layout: Self.layout(geometry: geometry, virtualByteCount: virtualByteCount))
        self.baseByteCount = baseByteCount
        self.createdUnixSeconds = createdUnixSeconds
        self.basePathGiven = basePathGiven
        self.basePathResolved = basePathResolved
        self.merge = nil
        try validate()
    }

    /// Where the bitmap and data regions go for a disk of this size.
    public static func layout(geometry: ChunkGeometry, virtualByteCount: UInt64) -> (
        bitmapByteOffset: UInt64, bitmapByteCount: UInt64, dataByteOffset: UInt64
    ) {
        let chunkCount = geometry.chunkCount(covering: virtualByteCount)
        let bitmapByteCount = roundUp((chunkCount + 7) / 8, toMultipleOf: bitmapAlignment)
        let bitmapByteOffset = UInt64(byteCount)
        let dataByteOffset = roundUp(
            bitmapByteOffset + bitmapByteCount, toMultipleOf: dataAlignment)
        return (bitmapByteOffset, bitmapByteCount, dataByteOffset)
    }

    /// Parses and validates the first `StoreHeader.byteCount` bytes of a store.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        fields = try ImageHeaderFields(
            parsing: bytes, record: Self.record,
            readableVersions: Self.currentVersion...Self.currentVersion)
        baseByteCount = bytes.loadLittleEndian(at: Field.baseByteCount, as: UInt64.self)
        createdUnixSeconds = bytes.loadLittleEndian(at: Field.createdUnixSeconds, as: UInt64.self)
        basePathGiven = try Self.parsePath(bytes, at: Field.basePathGiven, name: "base path")
        basePathResolved = try Self.parsePath(
            bytes, at: Field.basePathResolved, name: "resolved base path")
        merge = try MergeRecord(
            parsing: bytes, present: fields.incompatibleFeatures & Self.mergeInProgressFeature != 0)
        try Self.record.checkReserved(bytes, Field.reservedStart..<Field.basePathGiven)
        try validate()
    }

    /// Records a merge under way (or clears it), keeping the feature bit in step.
    public mutating func setMerge(_ record: MergeRecord?) {
        merge = record
        setIncompatibleFeature(Self.mergeInProgressFeature, record != nil)
    }

    /// True for a frozen layer: readable, never written (`snapshot` sets it).
    public var isFrozen: Bool { incompatibleFeatures & Self.frozenFeature != 0 }

    /// Marks the store a frozen layer, or not.
    public mutating func setFrozen(_ isFrozen: Bool) {
        setIncompatibleFeature(Self.frozenFeature, isFrozen)
    }

    /// Records whether the file has a checkpoint area.
    public mutating func setHasCheckpoints(_ hasCheckpoints: Bool) {
        setIncompatibleFeature(Self.checkpointsFeature, hasCheckpoints)
    }

    /// Sets or clears one incompatible feature bit (`mergeInProgressFeature`, ...).
    mutating func setIncompatibleFeature(_ feature: UInt32, _ isSet: Bool) {
        if isSet {
            fields.incompatibleFeatures |= feature
        } else {
            fields.incompatibleFeatures &= ~feature
        }
    }

    /// Binds the store to a new base (after a merge): its size, fingerprint and paths.
    public mutating func rebind(
        baseByteCount: UInt64, fingerprint: BaseFingerprint, basePathGiven: String,
        basePathResolved: String
    ) throws(FormatError) {
        try Self.checkBasePathLengths(basePathGiven, basePathResolved)
        self.baseByteCount = baseByteCount
        fields.fingerprint = fingerprint
        self.basePathGiven = basePathGiven
        self.basePathResolved = basePathResolved
    }

    /// Checks the relations between fields; run after parsing and before encoding.
    public func validate() throws(FormatError) {
        try fields.validate(
            knownIncompatibleFeatures: Self.knownIncompatibleFeatures,
            maxVirtualByteCount: Self.maxVirtualByteCount, mapName: "bitmap",
            layout: Self.layout(geometry: geometry, virtualByteCount: virtualByteCount))
        guard (merge != nil) == (incompatibleFeatures & Self.mergeInProgressFeature != 0) else {
            throw .invalidField(name: "merge record", value: UInt64(incompatibleFeatures))
        }
        guard chunkCount <= Self.maxChunkCount else {
            throw .invalidField(name: "chunk count", value: chunkCount)
        }
    }

    /// Largest virtual disk: 2^60 bytes keeps `dataByteOffset + virtual offset` far from overflow.
    public static let maxVirtualByteCount: UInt64 = 1 << 60

    /// Most chunks a store may have. Open allocates the bitmap's page table whole (8 bytes for
    /// each page of 32768 chunks), so this bounds what a header can make it allocate: 64 MiB.
    /// That is 1 PiB of 4 KiB chunks, or 256 PiB of 1 MiB chunks.
    public static let maxChunkCount: UInt64 = 1 << 38

    /// The header's layout within its frame: magic, fields, checksum at 4088.
    public static let record = ChecksummedRecord(
        magic: magic, byteCount: byteCount, kindName: "cowbd store")

    /// Stores the base's size, the creation time, the base paths and the merge record.
    public func encodeOwnFields(into header: UnsafeMutableRawBufferPointer) {
        header.storeLittleEndian(baseByteCount, at: Field.baseByteCount)
        header.storeLittleEndian(createdUnixSeconds, at: Field.createdUnixSeconds)
        Self.encodePath(basePathGiven, into: header, at: Field.basePathGiven)
        Self.encodePath(basePathResolved, into: header, at: Field.basePathResolved)
        merge?.encode(into: header)
    }

    /// Throws unless both base paths fit the header (`maxBasePathByteCount` each).
    static func checkBasePathLengths(_ given: String, _ resolved: String) throws(FormatError) {
        let longest = max(given.utf8.count, resolved.utf8.count)
        guard longest <= maxBasePathByteCount else {
            throw .invalidField(name: "base path length", value: UInt64(longest))
        }
    }

    static func parsePath(
        _ bytes: UnsafeRawBufferPointer, at byteOffset: Int, name: String
    ) throws(FormatError) -> String {
        let length = Int(bytes.loadLittleEndian(at: byteOffset, as: UInt16.self))
        guard length <= maxBasePathByteCount else {
            throw .invalidField(name: name + " length", value: UInt64(length))
        }
        let pathBytes = bytes[(byteOffset + 2)..<(byteOffset + 2 + length)]
        guard !pathBytes.contains(0), let path = String(validating: pathBytes, as: UTF8.self) else {
            throw .invalidField(name: name + " (not UTF-8)", value: UInt64(length))
        }
        return path
    }

    static func encodePath(
        _ path: String, into bytes: UnsafeMutableRawBufferPointer, at byteOffset: Int
    ) {
        let utf8 = Array(path.utf8)
        precondition(utf8.count <= maxBasePathByteCount, "path length checked at init")
        bytes.storeLittleEndian(UInt16(utf8.count), at: byteOffset)
        for (index, byte) in utf8.enumerated() { bytes[byteOffset + 2 + index] = byte }
    }
}
