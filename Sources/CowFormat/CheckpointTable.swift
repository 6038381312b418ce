// The checkpoint table of a store (docs/FORMAT.md, "Checkpoints"), as a value: which named
// points in time the store tracks changes since, and whether a writer has the store open.
// Two copies sit on disk and the newer valid one wins, so a torn write loses nothing.

/// One named point in time: the chunks changed since it are the bits of its bitmap slot.
public struct Checkpoint: Equatable, Sendable {
    /// `[A-Za-z0-9._-]`, 1 to `CheckpointTable.maxNameByteCount` bytes.
    public var name: String
    /// Random and non-zero: names this checkpoint in diffs made since it.
    public var id: UInt64
    public var createdUnixSeconds: UInt64
    /// The fingerprint the virtual disk had when the checkpoint was taken, so an incremental
    /// diff can check that its target holds that state.
    public var diskFingerprint: BaseFingerprint

    public init(
        name: String, id: UInt64, createdUnixSeconds: UInt64, diskFingerprint: BaseFingerprint
    ) {
        self.name = name
        self.id = id
        self.createdUnixSeconds = createdUnixSeconds
        self.diskFingerprint = diskFingerprint
    }

    /// Why `name` cannot name a checkpoint, or nil if it can.
    public static func problem(withName name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= CheckpointTable.maxNameByteCount else {
            return "a checkpoint name has 1 to \(CheckpointTable.maxNameByteCount) characters"
        }
        let allowed = bytes.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A)
                || (byte >= 0x61 && byte <= 0x7A) || byte == 0x2E || byte == 0x5F || byte == 0x2D
        }
        guard allowed, bytes[0] != 0x2D else {
            return "a checkpoint name uses letters, digits, '.', '_' and '-' (not first)"
        }
        return nil
    }
}

/// The table: a fixed number of slots, each free or holding one checkpoint.
public struct CheckpointTable: Equatable, Sendable {
    public static let magic: [UInt8] = Array("COWBDCKP".utf8)
    /// Bytes in one copy of the table.
    public static let byteCount = 4096
    /// Checkpoints a store can hold at once: each costs a bitmap-sized region and a bit to set
    /// on every write.
    public static let slotCount = 8
    public static let maxNameByteCount = 60
    /// Flag: a writer opened the store and has not closed it cleanly since.
    public static let openFlag: UInt32 = 1 << 0

    enum Field {
        static let generation = 8
        static let flags = 16
        static let entries = 32
        static let entryByteCount = 96
    }

    /// Grows by one at each write; the copy with the larger value is the current one.
    public var generation: UInt64
    /// Set while a writer has the store open: after a crash its bitmaps may miss writes.
    public var isOpen: Bool
    /// `slotCount` entries; slot `i` owns bitmap region `i`.
    public var slots: [Checkpoint?]

    public init() {
        generation = 0
        isOpen = false
        slots = Array(repeating: nil, count: Self.slotCount)
    }

    /// The checkpoints in use, with their slots, oldest first.
    public var checkpoints: [(slot: Int, checkpoint: Checkpoint)] {
        slots.enumerated().compactMap { slot, checkpoint in checkpoint.map { (slot, $0) } }
            .sorted { $0.checkpoint.createdUnixSeconds < $1.checkpoint.createdUnixSeconds }
    }

    public func slot(named name: String) -> Int? {
        slots.firstIndex { $0?.name == name }
    }

    /// Parses one copy; checks magic, checksum, flags, names and reserved bytes.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(FormatError) {
        try Self.record.check(bytes)
        generation = bytes.loadLittleEndian(at: Field.generation, as: UInt64.self)
        let flags = bytes.loadLittleEndian(at: Field.flags, as: UInt32.self)
        guard flags & ~Self.openFlag == 0 else {
            throw .invalidField(name: "checkpoint table flags", value: UInt64(flags))
        }
        isOpen = flags & Self.openFlag != 0
        slots = []
        for slot in 0..<Self.slotCount {
            slots.append(
                try Self.parseEntry(bytes, at: Field.entries + slot * Field.entryByteCount))
        }
        let entriesEnd = Field.entries + Self.slotCount * Field.entryByteCount
        for reserved in [20..<Field.entries, entriesEnd..<Self.record.checksumByteOffset] {
            try Self.record.checkReserved(bytes, reserved, name: "checkpoint table reserved byte")
        }
        let names = slots.compactMap { $0?.name }
        guard Set(names).count == names.count else {
            throw .invalidField(name: "checkpoint names (two alike)", value: UInt64(names.count))
        }
    }

    private static func parseEntry(_ bytes: UnsafeRawBufferPointer, at start: Int)
        throws(FormatError) -> Checkpoint?
    {
        let nameLength = Int(bytes.loadLittleEndian(at: start, as: UInt16.self))
        guard nameLength > 0 else {
            guard bytes[start..<(start + Field.entryByteCount)].allSatisfy({ $0 == 0 }) else {
                throw .invalidField(name: "free checkpoint slot (not zero)", value: UInt64(start))
            }
            return nil
        }
        guard nameLength <= maxNameByteCount,
            let name = String(
                validating: bytes[(start + 2)..<(start + 2 + nameLength)], as: UTF8.self),
            Checkpoint.problem(withName: name) == nil,
            bytes[(start + 2 + nameLength)..<(start + 64)].allSatisfy({ $0 == 0 })
        else {
            throw .invalidField(name: "checkpoint name length", value: UInt64(nameLength))
        }
        let id = bytes.loadLittleEndian(at: start + 64, as: UInt64.self)
        guard id != 0 else { throw .invalidField(name: "checkpoint id", value: 0) }
        return Checkpoint(
            name: name, id: id,
            createdUnixSeconds: bytes.loadLittleEndian(at: start + 72, as: UInt64.self),
            diskFingerprint: BaseFingerprint(loadingFrom: bytes, at: start + 80))
    }

    /// Writes one copy, with its checksum, into the first `byteCount` bytes of `bytes`.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(slots.count == Self.slotCount)
        Self.record.encode(into: bytes, encodeFields(into:))
    }

    /// One copy's frame: magic, fields, checksum at 4088.
    static let record = ChecksummedRecord(
        magic: magic, byteCount: byteCount, kindName: "cowbd checkpoint table")

    private func encodeFields(into table: UnsafeMutableRawBufferPointer) {
        table.storeLittleEndian(generation, at: Field.generation)
        table.storeLittleEndian(isOpen ? Self.openFlag : 0, at: Field.flags)
        for (slot, checkpoint) in slots.enumerated() {
            guard let checkpoint else { continue }
            let start = Field.entries + slot * Field.entryByteCount
            let name = Array(checkpoint.name.utf8)
            precondition(Checkpoint.problem(withName: checkpoint.name) == nil, "name checked")
            table.storeLittleEndian(UInt16(name.count), at: start)
            for (index, byte) in name.enumerated() { table[start + 2 + index] = byte }
            table.storeLittleEndian(checkpoint.id, at: start + 64)
            table.storeLittleEndian(checkpoint.createdUnixSeconds, at: start + 72)
            checkpoint.diskFingerprint.store(into: table, at: start + 80)
        }
    }

    public func encoded() -> [UInt8] {
        precondition(slots.count == Self.slotCount)
        return Self.record.encoded(encodeFields(into:))
    }

    /// The current table of two copies: the valid one with the larger generation. Nil if
    /// neither is valid (the error of the second copy is thrown).
    public static func current(of first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer)
        throws(FormatError) -> CheckpointTable
    {
        let tables = [first, second].map { bytes in
            Result { () throws(FormatError) in try CheckpointTable(parsing: bytes) }
        }
        let valid = tables.compactMap { try? $0.get() }
        guard let newest = valid.max(by: { $0.generation < $1.generation }) else {
            _ = try tables[1].get()
            preconditionFailure("an invalid copy throws")
        }
        return newest
    }

    /// Which copy (0 or 1) a table of `generation` is written to: they alternate, so the
    /// other copy still holds the previous table while this one is written.
    public static func copyIndex(forGeneration generation: UInt64) -> Int {
        Int(generation % 2)
    }
}

extension StoreHeader {
    /// Where the checkpoint area starts: the first 1 MiB boundary past the data region.
    public var checkpointAreaByteOffset: UInt64 {
        roundUp(dataByteOffset + virtualByteCount, toMultipleOf: Self.dataAlignment)
    }

    /// The byte offset of bitmap slot `slot` in the checkpoint area (after the two tables).
    public func checkpointBitmapByteOffset(slot: Int) -> UInt64 {
        checkpointAreaByteOffset + 2 * UInt64(CheckpointTable.byteCount) + UInt64(slot)
            * bitmapByteCount
    }

    /// The file's size as the format defines it: the data region's end, or the checkpoint
    /// area's end when the store has checkpoints, or the hydration bitmap's end when it has one.
    public var expectedFileByteCount: UInt64 {
        if hasHydration { return hydrationBitmapByteOffset + bitmapByteCount }
        return hasCheckpoints
            ? checkpointBitmapByteOffset(slot: CheckpointTable.slotCount)
            : dataByteOffset + virtualByteCount
    }

    public var hasCheckpoints: Bool { incompatibleFeatures & Self.checkpointsFeature != 0 }
}
