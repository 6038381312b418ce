// Network byte order for the wire: appending to arrays (handshake, rare) and storing into
// preallocated buffers (transmission, hot).

extension Array where Element == UInt8 {
    /// Appends `value` in network byte order.
    @inlinable
    public mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores `value` in network byte order at `byteOffset`.
    @inlinable
    public func storeBigEndian<T: FixedWidthInteger>(_ value: T, at byteOffset: Int) {
        precondition(byteOffset >= 0 && byteOffset + MemoryLayout<T>.size <= count)
        storeBytes(of: value.bigEndian, toByteOffset: byteOffset, as: T.self)
    }
}

extension UnsafeRawBufferPointer {
    /// Loads a network-byte-order integer at `byteOffset`.
    @inlinable
    public func loadBigEndian<T: FixedWidthInteger>(at byteOffset: Int, as type: T.Type) -> T {
        precondition(byteOffset >= 0 && byteOffset + MemoryLayout<T>.size <= count)
        return T(bigEndian: loadUnaligned(fromByteOffset: byteOffset, as: T.self))
    }
}

/// Reads fields in order from an option's data; every read is bounds-checked.
public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remainingByteCount: Int { bytes.count - position }

    /// The next `T` in network byte order, or nil if too few bytes remain.
    public mutating func read<T: FixedWidthInteger>(_ type: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard remainingByteCount >= size else { return nil }
        var value: T = 0
        for index in 0..<size { value = value << 8 | T(bytes[position + index]) }
        position += size
        return value
    }

    /// The next `byteCount` bytes, or nil if too few remain.
    public mutating func read(byteCount: Int) -> ArraySlice<UInt8>? {
        guard byteCount >= 0, remainingByteCount >= byteCount else { return nil }
        defer { position += byteCount }
        return bytes[position..<(position + byteCount)]
    }
}
