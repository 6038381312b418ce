import CXXHash
import CowFormat
import Testing

/// 10 GiB + 123 bytes in 64 KiB blocks: 163841 blocks, a 5242912-byte index, data at 5251072,
/// a 64 KiB dictionary.
private func sampleHeader() throws -> LZ4ImageHeader {
    try LZ4ImageHeader(
        geometry: LZ4BlockGeometry(shift: 16), virtualByteCount: 10 << 30 + 123,
        fingerprint: BaseFingerprint(low: 0x0123_4567_89ab_cdef, high: 0xfedc_ba98_7654_3210),
        compressionLevel: 9, fileByteCount: 3 << 30 + 12345, dictionaryByteCount: 65536,
        dictionaryChecksum: 0x1122_3344_5566_7788)
}

/// The sample header (version 2), encoded by hand from docs/FORMAT.md (C with libxxhash).
private let goldenHeaderHex =
    "434f5742444c5a34020000008000000010000000000000007b00008002000000"
    + "0180020000000000efcdab89674523011032547698badcfe0100000000000000"
    + "001000000000000020005000000000000020500000000000393000c000000000"
    + "090000000000010088776655443322110000000000000000306d7eb97cc24f55"

/// The same image as a version 1 header, without a dictionary: what cowbd wrote before
/// version 2 (Python's struct and libxxhash).
private let goldenVersion1HeaderHex =
    "434f5742444c5a34010000008000000010000000000000007b00008002000000"
    + "0180020000000000efcdab89674523011032547698badcfe0100000000000000"
    + "001000000000000020005000000000000020500000000000393000c000000000"
    + "09000000000000000000000000000000000000000000000016d09932d3270ba7"

private func bytes(fromHex hex: String) -> [UInt8] {
    var result: [UInt8] = []
    var index = hex.startIndex
    while index < hex.endIndex {
        let next = hex.index(index, offsetBy: 2)
        result.append(UInt8(hex[index..<next], radix: 16) ?? 0)
        index = next
    }
    return result
}

private func parse(_ bytes: [UInt8]) throws -> LZ4ImageHeader {
    try bytes.withUnsafeBytes { try LZ4ImageHeader(parsing: $0) }
}

/// `bytes` with a little-endian `value` of `width` bytes at `offset` and the checksum redone,
/// so that the field check, not the checksum, is what fails.
private func patched(_ bytes: [UInt8], at offset: Int, width: Int, _ value: UInt64) -> [UInt8] {
    var copy = bytes
    for byteIndex in 0..<width {
        copy[offset + byteIndex] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(byteIndex)))
    }
    return resealed(copy)
}

/// The bytes with their checksum redone: XXH64, seed 0, of bytes 0..<120 (docs/FORMAT.md).
private func resealed(_ bytes: [UInt8]) -> [UInt8] {
    var copy = bytes
    let checksum = bytes.withUnsafeBytes { XXH64($0.baseAddress, 120, 0) }
    for byteIndex in 0..<8 {
        copy[120 + byteIndex] = UInt8(truncatingIfNeeded: checksum >> (8 * UInt64(byteIndex)))
    }
    return copy
}

@Test func lz4HeaderEncodesToTheGoldenBytes() throws {
    let encoded = try sampleHeader().encoded()
    #expect(encoded == bytes(fromHex: goldenHeaderHex))
    #expect(try parse(encoded) == sampleHeader())
}

@Test func aVersion1HeaderStillParsesWithoutADictionary() throws {
    let header = try parse(bytes(fromHex: goldenVersion1HeaderHex))
    #expect(header.version == 1)
    #expect(header.dictionaryByteCount == 0 && header.dictionaryChecksum == 0)
    #expect(header.blockDataByteOffset == header.dataByteOffset)
    #expect(header.virtualByteCount == 10 << 30 + 123 && header.compressionLevel == 9)
    #expect(header.encoded() == bytes(fromHex: goldenVersion1HeaderHex))
    // Version 1 has no dictionary fields: their bytes are reserved there.
    #expect(throws: FormatError.invalidField(name: "reserved byte at offset 100", value: 1)) {
        try parse(patched(bytes(fromHex: goldenVersion1HeaderHex), at: 100, width: 1, 1))
    }
}

@Test func theDictionaryMovesTheBlockDataAndTheSmallestFile() throws {
    let header = try sampleHeader()
    #expect(header.blockDataByteOffset == 5_251_072 + 65536)
    #expect(throws: FormatError.invalidField(name: "file size", value: 5_251_072 + 65536 + 127)) {
        try LZ4ImageHeader(
            geometry: LZ4BlockGeometry(shift: 16), virtualByteCount: 10 << 30 + 123,
            fingerprint: header.fingerprint, compressionLevel: 9,
            fileByteCount: 5_251_072 + 65536 + 127, dictionaryByteCount: 65536,
            dictionaryChecksum: 1)
    }
}

@Test func lz4HeaderLayoutFollowsTheBlockCount() throws {
    let header = try sampleHeader()
    #expect(header.blockCount == 163_841)
    #expect(header.indexByteOffset == 4096)
    #expect(header.indexByteCount == 163_841 * 32)
    #expect(header.dataByteOffset == 5_251_072)
    #expect(header.footerByteOffset == 3 << 30 + 12345 - 128)
}

@Test func everyTruncationOfAnLZ4HeaderIsRejected() throws {
    let encoded = try sampleHeader().encoded()
    for length in 0..<LZ4ImageHeader.recordByteCount {
        #expect(throws: FormatError.truncated(expectedByteCount: 128, actualByteCount: length)) {
            try parse(Array(encoded[..<length]))
        }
    }
}

@Test func anyFlippedByteOfAnLZ4HeaderIsCaught() throws {
    let original = try sampleHeader().encoded()
    for offset in 0..<LZ4ImageHeader.recordByteCount {
        var bytes = original
        bytes[offset] ^= 0x10
        #expect(throws: FormatError.self, "byte \(offset)") { try parse(bytes) }
    }
}

@Test func everyBadLZ4HeaderFieldIsRefusedByName() throws {
    let good = try sampleHeader().encoded()
    let cases: [(offset: Int, width: Int, value: UInt64, expected: FormatError)] = [
        (8, 4, 0, .unsupportedVersion(0)),
        (8, 4, 3, .unsupportedVersion(3)),
        (12, 4, 4096, .invalidField(name: "header size", value: 4096)),
        (16, 4, 13, .invalidField(name: "block size shift", value: 13)),
        (16, 4, 21, .invalidField(name: "block size shift", value: 21)),
        (20, 4, 1, .unknownIncompatibleFeatures(1)),
        (24, 8, 0, .invalidField(name: "virtual size", value: 0)),
        (24, 8, 1 << 60 + 1, .invalidField(name: "virtual size", value: 1 << 60 + 1)),
        (32, 8, 163_840, .invalidField(name: "block count", value: 163_840)),
        (56, 4, 2, .invalidField(name: "fingerprint scheme", value: 2)),
        (64, 8, 8192, .invalidField(name: "index offset", value: 8192)),
        (72, 8, 32, .invalidField(name: "index size", value: 32)),
        (80, 8, 5_251_073, .invalidField(name: "data offset", value: 5_251_073)),
        (88, 8, 5_251_072, .invalidField(name: "file size", value: 5_251_072)),
        (88, 8, 11 << 30, .invalidField(name: "file size", value: 11 << 30)),
        (96, 4, 13, .invalidField(name: "compression level", value: 13)),
        (100, 4, 65537, .invalidField(name: "dictionary size", value: 65537)),
        (
            100, 4, 0,
            .invalidField(name: "dictionary checksum (no dictionary)", value: 0x1122_3344_5566_7788)
        ),
        (112, 1, 1, .invalidField(name: "reserved byte at offset 112", value: 1)),
        (119, 1, 7, .invalidField(name: "reserved byte at offset 119", value: 7)),
    ]
    for (offset, width, value, expected) in cases {
        #expect(throws: expected, "field at \(offset) = \(value)") {
            try parse(patched(good, at: offset, width: width, value))
        }
    }
    var badMagic = good
    badMagic[7] = UInt8(ascii: "5")
    #expect(throws: FormatError.badMagic(expected: "cowbd-lz4 image")) { try parse(badMagic) }
    #expect(try parse(patched(good, at: 60, width: 4, 0xffff)).compatibleFeatures == 0xffff)
}

@Test func lz4HeaderRefusesAFileTooSmallForItsIndex() throws {
    #expect(throws: FormatError.invalidField(name: "file size", value: 4096)) {
        try LZ4ImageHeader(
            geometry: LZ4BlockGeometry(shift: 14), virtualByteCount: 1 << 20,
            fingerprint: BaseFingerprint(low: 0, high: 0), compressionLevel: 0,
            fileByteCount: 4096)
    }
}

@Test func blockSizesOutsideTheRangeAreRefused() {
    for size: UInt64 in [0, 4096, 8192, 3 << 14, (1 << 20) + 1, 2 << 20] {
        #expect(throws: FormatError.self) { try LZ4BlockGeometry(blockByteCount: size) }
    }
    for shift: UInt32 in 14...20 {
        #expect((try? LZ4BlockGeometry(blockByteCount: 1 << UInt64(shift)))?.shift == shift)
    }
}

@Test func blockGeometryCountsAPartialLastBlock() throws {
    let geometry = try LZ4BlockGeometry(blockByteCount: 65536)
    #expect(geometry.blockCount(covering: 65536) == 1)
    #expect(geometry.blockCount(covering: 65537) == 2)
    #expect(geometry.byteCount(ofBlock: 1, virtualByteCount: 65537) == 1)
    #expect(geometry.byteCount(ofBlock: 0, virtualByteCount: 65537) == 65536)
    #expect(geometry.blockIndex(containing: 131_071) == 1)
    #expect(geometry.byteOffset(ofBlock: 3) == 196_608)
}
