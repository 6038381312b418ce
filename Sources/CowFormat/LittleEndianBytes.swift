// Fixed-width little-endian integer access to byte buffers, for on-disk records.
// Bounds are the caller's contract (checked by precondition), not parse errors.

extension UnsafeRawBufferPointer {
    /// Reads a little-endian integer of type `T` at `byteOffset`.
    @inlinable
    public func loadLittleEndian<T: FixedWidthInteger>(at byteOffset: Int, as type: T.Type) -> T {
        precondition(byteOffset >= 0 && byteOffset + MemoryLayout<T>.size <= count)
        return T(littleEndian: loadUnaligned(fromByteOffset: byteOffset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Writes `value` as a little-endian integer at `byteOffset`.
    @inlinable
    public func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at byteOffset: Int) {
        precondition(byteOffset >= 0 && byteOffset + MemoryLayout<T>.size <= count)
        storeBytes(of: value.littleEndian, toByteOffset: byteOffset, as: T.self)
    }
}
