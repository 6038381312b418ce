// The arithmetic of a unit whose size is a power of two, kept as a shift with its mask: the
// one place that converts between byte offsets, unit indexes and unit counts. A store's chunks
// and a compressed image's blocks are two such units (ChunkGeometry, LZ4BlockGeometry).

/// What a power-of-two unit is called and which sizes it may take.
public protocol PowerOfTwoUnit: Sendable {
    /// log2 of the smallest size allowed.
    static var minimumShift: UInt32 { get }
    /// log2 of the largest size allowed.
    static var maximumShift: UInt32 { get }
    /// log2 of the size used when none is given.
    static var defaultShift: UInt32 { get }
    /// The size's name in errors: "chunk size".
    static var sizeName: String { get }
    /// The allowed sizes in errors: "4 KiB to 1 MiB".
    static var rangeText: String { get }
}

/// The size of a unit `Unit`: a power of two within `Unit`'s range.
public struct PowerOfTwoGeometry<Unit: PowerOfTwoUnit>: Equatable, Sendable {
    public static var minimumShift: UInt32 { Unit.minimumShift }
    public static var maximumShift: UInt32 { Unit.maximumShift }
    public static var defaultShift: UInt32 { Unit.defaultShift }

    /// log2 of the unit's size.
    public let shift: UInt32
    /// Bytes in one unit.
    @inlinable public var unitByteCount: UInt64 { 1 << UInt64(shift) }
    /// `unitByteCount - 1`: the offset-in-unit bits.
    @inlinable public var offsetMask: UInt64 { unitByteCount - 1 }

    /// Accepts a shift within the unit's range.
    public init(shift: UInt32) throws(FormatError) {
        guard shift >= Unit.minimumShift && shift <= Unit.maximumShift else {
            throw .invalidField(name: Unit.sizeName + " shift", value: UInt64(shift))
        }
        self.shift = shift
    }

    /// Accepts a size in bytes if it is a power of two within the unit's range.
    public init(unitByteCount: UInt64) throws(FormatError) {
        guard unitByteCount > 0 && unitByteCount & (unitByteCount - 1) == 0 else {
            throw .invalidField(name: Unit.sizeName + " (not a power of two)", value: unitByteCount)
        }
        let shift = UInt32(unitByteCount.trailingZeroBitCount)
        guard shift >= Unit.minimumShift && shift <= Unit.maximumShift else {
            throw .invalidField(
                name: "\(Unit.sizeName) (\(Unit.rangeText))", value: unitByteCount)
        }
        self.shift = shift
    }

    /// The unit that holds byte `byteOffset`.
    @inlinable
    public func unitIndex(containing byteOffset: UInt64) -> UInt64 { byteOffset >> UInt64(shift) }

    /// The byte offset where unit `unitIndex` starts.
    @inlinable
    public func byteOffset(ofUnit unitIndex: UInt64) -> UInt64 { unitIndex << UInt64(shift) }

    /// The number of units needed to cover `byteCount` bytes (the last may be partial).
    @inlinable
    public func unitCount(covering byteCount: UInt64) -> UInt64 {
        (byteCount >> UInt64(shift)) + (byteCount & offsetMask == 0 ? 0 : 1)
    }
}

/// Rounds `value` up to a multiple of `alignment`, a power of two.
@inlinable
public func roundUp(_ value: UInt64, toMultipleOf alignment: UInt64) -> UInt64 {
    precondition(alignment > 0 && alignment & (alignment - 1) == 0)
    return (value + alignment - 1) & ~(alignment - 1)
}
