// Reading and writing a record field after field: each field starts where the one before
// ends and is as wide as its type, so a record's layout is the order of its fields and no
// offset is typed by hand. Little-endian, as every on-disk record (LittleEndianBytes.swift).

/// A position in a record's bytes that moves past each field read, written or skipped.
struct FieldCursor<Bytes> {
    let bytes: Bytes
    /// Where the next field starts.
    private(set) var byteOffset: Int

    init(_ bytes: Bytes, at byteOffset: Int = 0) {
        self.bytes = bytes
        self.byteOffset = byteOffset
    }

    /// Passes over a field of type `T` that another part of the record reads or writes.
    mutating func skip<T: FixedWidthInteger>(_ type: T.Type) {
        byteOffset += MemoryLayout<T>.size
    }
}

/// Reads a record's fields in order.
typealias LittleEndianReader = FieldCursor<UnsafeRawBufferPointer>
/// Writes a record's fields in order, as `LittleEndianReader` reads them.
typealias LittleEndianWriter = FieldCursor<UnsafeMutableRawBufferPointer>

extension FieldCursor where Bytes == UnsafeRawBufferPointer {
    /// Reads the next field: a little-endian integer of type `T`.
    mutating func read<T: FixedWidthInteger>(_ type: T.Type = T.self) -> T {
        defer { skip(T.self) }
        return bytes.loadLittleEndian(at: byteOffset, as: T.self)
    }
}

extension FieldCursor where Bytes == UnsafeMutableRawBufferPointer {
    /// Writes the next field: `value` as a little-endian integer.
    mutating func write<T: FixedWidthInteger>(_ value: T) {
        bytes.storeLittleEndian(value, at: byteOffset)
        skip(T.self)
    }
}
