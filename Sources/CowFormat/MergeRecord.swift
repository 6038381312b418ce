// The part of the store header that records a merge under way, so an interrupted merge can be
// finished by running it again (docs/FORMAT.md, "Merge"). Present only while the
// merge-in-progress feature bit is set; all zeros otherwise.

/// Where a merge is writing, and what the target will hold when it is done.
public struct MergeRecord: Equatable, Sendable {
    /// The target is the base itself (`merge --in-place`).
    public static let inPlaceFlag: UInt32 = 1 << 0

    /// `inPlaceFlag` or 0.
    public var flags: UInt32
    /// The target's size when the merge is done: the virtual disk's size.
    public var targetByteCount: UInt64
    /// The fingerprint of the virtual disk, which the target will carry when the merge is done.
    public var targetFingerprint: BaseFingerprint
    /// The target's path, absolute.
    public var targetPath: String

    public var isInPlace: Bool { flags & Self.inPlaceFlag != 0 }

    public init(
        flags: UInt32, targetByteCount: UInt64, targetFingerprint: BaseFingerprint,
        targetPath: String
    )
        throws(FormatError)
    {
        guard targetPath.utf8.count <= Self.maxTargetPathByteCount else {
            throw .invalidField(
                name: "merge target path length", value: UInt64(targetPath.utf8.count))
        }
        self.flags = flags
        self.targetByteCount = targetByteCount
        self.targetFingerprint = targetFingerprint
        self.targetPath = targetPath
    }

    /// Longest target path: the slot at 3072 holds a 2-byte length and the bytes up to 4088.
    public static let maxTargetPathByteCount = 1014

    /// Reads the record from a whole header; nil when `present` is false (the bytes must be zero).
    init?(parsing bytes: UnsafeRawBufferPointer, present: Bool) throws(FormatError) {
        typealias Field = StoreHeader.Field
        guard present else {
            let zero =
                bytes[Field.mergeFlags..<Field.reservedStart].allSatisfy { $0 == 0 }
                && bytes[Field.mergeTargetPath..<StoreHeader.record.checksumByteOffset].allSatisfy {
                    $0 == 0
                }
            guard zero else { throw .invalidField(name: "merge fields without a merge", value: 0) }
            return nil
        }
        flags = bytes.loadLittleEndian(at: Field.mergeFlags, as: UInt32.self)
        guard flags & ~Self.inPlaceFlag == 0 else {
            throw .invalidField(name: "merge flags", value: UInt64(flags))
        }
        targetByteCount = bytes.loadLittleEndian(at: Field.mergeTargetByteCount, as: UInt64.self)
        targetFingerprint = BaseFingerprint(loadingFrom: bytes, at: Field.mergeFingerprint)
        let length = Int(bytes.loadLittleEndian(at: Field.mergeTargetPath, as: UInt16.self))
        guard length > 0, length <= Self.maxTargetPathByteCount else {
            throw .invalidField(name: "merge target path length", value: UInt64(length))
        }
        targetPath = try StoreHeader.parsePath(
            bytes, at: Field.mergeTargetPath, name: "merge target path")
    }

    func encode(into bytes: UnsafeMutableRawBufferPointer) {
        typealias Field = StoreHeader.Field
        bytes.storeLittleEndian(flags, at: Field.mergeFlags)
        bytes.storeLittleEndian(targetByteCount, at: Field.mergeTargetByteCount)
        targetFingerprint.store(into: bytes, at: Field.mergeFingerprint)
        StoreHeader.encodePath(targetPath, into: bytes, at: Field.mergeTargetPath)
    }
}
