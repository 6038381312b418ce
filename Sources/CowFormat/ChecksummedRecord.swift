// The frame shared by cowbd's fixed-size records (the store header, a compressed image's
// header and footer, a checkpoint table copy, an import record, a diff header): an 8-byte magic
// at offset 0 and, in the last 8 bytes, a hash (seed 0) of every byte before them,
// little-endian: XXH64, or XXH3-64 for a diff header. The fields in between are each record's
// own. No I/O.

import CXXHash

/// The size, magic and checksum of one kind of record. Public as a type only, so that
/// `ImageHeader` can name its headers' frames; what it does stays inside CowFormat.
public struct ChecksummedRecord: Sendable {
    /// The first 8 bytes of every record of this kind.
    let magic: [UInt8]
    /// Bytes in the record, checksum included.
    let byteCount: Int
    /// What the record is, for `FormatError.badMagic` ("cowbd store").
    let kindName: String
    /// The hash its checksum is.
    var checksumHash: ChecksumHash = .xxh64

    /// The hashes a record's checksum may be.
    enum ChecksumHash: Sendable {
        /// `XXH64`, seed 0: every record but the diff header.
        case xxh64
        /// `XXH3_64bits`: the diff header, whose stream's other checksums are XXH3 too.
        case xxh3
    }

    /// Where the checksum is: the record's last 8 bytes.
    var checksumByteOffset: Int { byteCount - 8 }

    /// The hash of the bytes before the checksum.
    func checksum(of bytes: UnsafeRawBufferPointer) -> UInt64 {
        precondition(bytes.count >= checksumByteOffset)
        switch checksumHash {
        case .xxh64: return XXH64(bytes.baseAddress, checksumByteOffset, 0)
        case .xxh3: return XXH3_64bits(bytes.baseAddress, checksumByteOffset)
        }
    }

    /// Checks that `bytes` start with a whole record of this kind: long enough, the magic,
    /// then the checksum. The fields are the caller's to parse.
    func check(_ bytes: UnsafeRawBufferPointer) throws(FormatError) {
        guard bytes.count >= byteCount else {
            throw .truncated(expectedByteCount: byteCount, actualByteCount: bytes.count)
        }
        guard bytes.prefix(magic.count).elementsEqual(magic) else {
            throw .badMagic(expected: kindName)
        }
        let stored = bytes.loadLittleEndian(at: checksumByteOffset, as: UInt64.self)
        let computed = checksum(of: bytes)
        guard stored == computed else {
            throw .checksumMismatch(stored: stored, computed: computed)
        }
    }

    /// Throws for the first nonzero byte in `reserved`: bytes this version keeps zero, so that a
    /// later one may give them a meaning.
    func checkReserved(
        _ bytes: UnsafeRawBufferPointer, _ reserved: Range<Int>, name: String = "reserved byte"
    ) throws(FormatError) {
        precondition(reserved.upperBound <= checksumByteOffset, "the checksum is not reserved")
        for byteOffset in reserved where bytes[byteOffset] != 0 {
            throw .invalidField(
                name: "\(name) at offset \(byteOffset)", value: UInt64(bytes[byteOffset]))
        }
    }

    /// Writes a record into the first `byteCount` bytes of `bytes`: zeros, the magic, the
    /// fields `writeFields` stores, then the checksum over all of them.
    func encode(
        into bytes: UnsafeMutableRawBufferPointer,
        _ writeFields: (UnsafeMutableRawBufferPointer) -> Void
    ) {
        precondition(bytes.count >= byteCount)
        let record = UnsafeMutableRawBufferPointer(rebasing: bytes[..<byteCount])
        record.initializeMemory(as: UInt8.self, repeating: 0)
        for (index, byte) in magic.enumerated() { record[index] = byte }
        writeFields(record)
        record.storeLittleEndian(
            checksum(of: UnsafeRawBufferPointer(record)), at: checksumByteOffset)
    }

    /// The record `encode` writes, as a byte array.
    func encoded(_ writeFields: (UnsafeMutableRawBufferPointer) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        bytes.withUnsafeMutableBytes { encode(into: $0, writeFields) }
        return bytes
    }
}
