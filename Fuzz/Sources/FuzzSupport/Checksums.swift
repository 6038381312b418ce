// Recomputes the checksums of cowbd's formats inside fuzz inputs, so mutated inputs get past
// the checksum checks and reach the field checks behind them. The checks themselves are
// covered by the unit tests' bad-checksum cases.

import FuzzXXHash

extension Array where Element == UInt8 {
    /// The little-endian integer at `byteOffset`, or nil if the array is too short.
    public func littleEndian<T: FixedWidthInteger>(at byteOffset: Int, as type: T.Type) -> T? {
        guard byteOffset >= 0, byteOffset + MemoryLayout<T>.size <= count else { return nil }
        var value: T = 0
        for index in (0..<MemoryLayout<T>.size).reversed() {
            value = value << 8 | T(self[byteOffset + index])
        }
        return value
    }

    /// Stores `value` little-endian at `byteOffset` if it fits; does nothing otherwise.
    public mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at byteOffset: Int) {
        guard byteOffset >= 0, byteOffset + MemoryLayout<T>.size <= count else { return }
        for index in 0..<MemoryLayout<T>.size {
            self[byteOffset + index] = UInt8(truncatingIfNeeded: value >> (index * 8))
        }
    }

    /// XXH64 (seed 0) of `range`. The corresponding C function is `XXH64`.
    public func xxh64(_ range: Range<Int>) -> UInt64 {
        withUnsafeBytes { XXH64($0.baseAddress.map { $0 + range.lowerBound }, range.count, 0) }
    }

    /// XXH3-64 of `range` with `seed`. The corresponding C function is `XXH3_64bits_withSeed`.
    public func xxh3(_ range: Range<Int>, seed: UInt64 = 0) -> UInt64 {
        withUnsafeBytes {
            XXH3_64bits_withSeed($0.baseAddress.map { $0 + range.lowerBound }, range.count, seed)
        }
    }
}
