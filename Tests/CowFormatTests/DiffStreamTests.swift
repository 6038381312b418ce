// The native diff header and record header: golden bytes, round trips, every truncation and
// bad field values.

import CowFormat
import Testing

private let header = DiffHeader(
    chunkByteCount: 4096, virtualByteCount: 1 << 30, baseByteCount: 1 << 29,
    baseFingerprint: BaseFingerprint(low: 0x0102_0304_0506_0708, high: 0x1112_1314_1516_1718))

private func encoded(_ header: DiffHeader) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: DiffHeader.byteCount)
    bytes.withUnsafeMutableBytes { header.encode(into: $0) }
    return bytes
}

private func parse(_ bytes: [UInt8]) throws -> DiffHeader {
    try bytes.withUnsafeBytes { bytes throws(FormatError) in try DiffHeader(parsing: bytes) }
}

@Test func diffHeaderHasTheDocumentedLayoutAndRoundTrips() throws {
    let bytes = encoded(header)
    #expect(Array(bytes[0..<8]) == Array("COWBDDIF".utf8))
    #expect(Array(bytes[8..<12]) == [1, 0, 0, 0])
    #expect(Array(bytes[12..<16]) == [0, 0x10, 0, 0])
    #expect(Array(bytes[16..<24]) == [0, 0, 0, 0x40, 0, 0, 0, 0])
    #expect(Array(bytes[24..<32]) == [0, 0, 0, 0x20, 0, 0, 0, 0])
    #expect(Array(bytes[32..<40]) == [8, 7, 6, 5, 4, 3, 2, 1])
    #expect(Array(bytes[48..<56]) == [0, 0, 0, 0, 0, 0, 0, 0])
    #expect(try parse(bytes) == header)
}

@Test func everyTruncationOfADiffHeaderIsRefused() {
    let bytes = encoded(header)
    for count in 0..<DiffHeader.byteCount {
        #expect(throws: FormatError.self) { _ = try parse(Array(bytes.prefix(count))) }
    }
}

@Test func everyChangedByteOfADiffHeaderIsRefused() {
    let bytes = encoded(header)
    for byteOffset in 0..<DiffHeader.byteCount {
        var changed = bytes
        changed[byteOffset] ^= 0x01
        #expect(throws: FormatError.self) { _ = try parse(changed) }
    }
}

@Test func diffRecordRoundTripsAndRefusesBadKindsAndReservedBits() throws {
    let record = DiffRecord(kind: .data, first: 4096, second: 8192, checksum: 0xABCD)
    var bytes = [UInt8](repeating: 0, count: DiffRecord.byteCount)
    bytes.withUnsafeMutableBytes { record.encode(into: $0) }
    #expect(Array(bytes[0..<8]) == [1, 0, 0, 0, 0, 0, 0, 0])
    let parsed = try bytes.withUnsafeBytes { bytes throws(FormatError) in
        try DiffRecord(parsing: bytes)
    }
    #expect(parsed == record)
    for (byteOffset, value) in [(0, UInt8(0)), (0, 4), (4, 1)] {
        var bad = bytes
        bad[byteOffset] = value
        #expect(throws: FormatError.self) {
            _ = try bad.withUnsafeBytes { bytes throws(FormatError) in
                try DiffRecord(parsing: bytes)
            }
        }
    }
    #expect(throws: FormatError.self) {
        _ = try Array(bytes.prefix(31)).withUnsafeBytes { bytes throws(FormatError) in
            try DiffRecord(parsing: bytes)
        }
    }
}
