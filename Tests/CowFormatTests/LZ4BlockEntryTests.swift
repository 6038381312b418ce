import CXXHash
import CowFormat
import Testing

/// Entries encoded by hand from docs/FORMAT.md (Python's struct and libxxhash): block 7, LZ4,
/// 30000 bytes at 0x123456; and block 9, a zero block.
private let goldenLZ4EntryHex = "563412000000000030750000000000008877665544332211da67cdaa62dcfaac"
private let goldenZeroEntryHex = "0000000000000000000000000100000000000000000000003044b33f3677fe8e"

private func bytes(fromHex hex: String) -> [UInt8] {
    stride(from: 0, to: hex.count, by: 2).map { offset in
        let start = hex.index(hex.startIndex, offsetBy: offset)
        return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16) ?? 0
    }
}

private func encode(_ entry: LZ4BlockEntry, blockIndex: UInt64) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: LZ4BlockEntry.byteCount)
    bytes.withUnsafeMutableBytes { entry.encode(into: $0, blockIndex: blockIndex) }
    return bytes
}

private func parse(_ bytes: [UInt8], blockIndex: UInt64) throws -> LZ4BlockEntry {
    try bytes.withUnsafeBytes { try LZ4BlockEntry(parsing: $0, blockIndex: blockIndex) }
}

private let sampleEntry = LZ4BlockEntry(
    storage: .lz4, dataByteOffset: 0x12_3456, storedByteCount: 30000,
    dataChecksum: 0x1122_3344_5566_7788)

@Test func lz4EntriesEncodeToTheGoldenBytes() throws {
    #expect(encode(sampleEntry, blockIndex: 7) == bytes(fromHex: goldenLZ4EntryHex))
    #expect(encode(.zero, blockIndex: 9) == bytes(fromHex: goldenZeroEntryHex))
    #expect(try parse(bytes(fromHex: goldenLZ4EntryHex), blockIndex: 7) == sampleEntry)
    #expect(try parse(bytes(fromHex: goldenZeroEntryHex), blockIndex: 9) == .zero)
}

@Test func dataChecksumIsXXH3OfTheStoredBytes() {
    let hello = Array("hello".utf8)
    #expect(hello.withUnsafeBytes { LZ4BlockEntry.dataChecksum(of: $0) } == 0x9555_e855_5c62_dcfd)
}

/// The checksum runs libxxhash's dispatching XXH3 on x86-64: at every input size class (the
/// short paths, the 240-byte limit, stripes, blocks, a tail) it equals the portable build.
@Test func dataChecksumEqualsThePortableXXH3AtEverySize() {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    let bytes = (0..<20000).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
    for count in [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 6553, 16391] {
        bytes.withUnsafeBytes { all in
            let part = UnsafeRawBufferPointer(rebasing: all[..<count])
            #expect(
                LZ4BlockEntry.dataChecksum(of: part) == XXH3_64bits(part.baseAddress, part.count),
                "\(count) bytes")
        }
    }
}

@Test func everyStorageRoundTrips() throws {
    let raw = LZ4BlockEntry(
        storage: .raw, dataByteOffset: 8192, storedByteCount: 65536, dataChecksum: 42)
    for (entry, blockIndex) in [(sampleEntry, UInt64(0)), (raw, 1 << 40), (.zero, 3)] {
        #expect(try parse(encode(entry, blockIndex: blockIndex), blockIndex: blockIndex) == entry)
    }
}

@Test func anyFlippedByteOfAnEntryIsADamagedEntry() {
    let original = encode(sampleEntry, blockIndex: 7)
    for offset in 0..<LZ4BlockEntry.byteCount {
        var bytes = original
        bytes[offset] ^= 0x01
        #expect {
            try parse(bytes, blockIndex: 7)
        } throws: { error in
            if case .checksumMismatch = error as? FormatError { return true }
            return false
        }
    }
}

@Test func anEntryReadAsAnotherBlocksIsDamaged() {
    let bytes = encode(sampleEntry, blockIndex: 7)
    for blockIndex: UInt64 in [0, 6, 8, 7 << 32] {
        #expect(throws: FormatError.self) { try parse(bytes, blockIndex: blockIndex) }
    }
}

@Test func unknownFlagsWithAValidChecksumAreRefused() {
    for flags: UInt32 in [3, 4, 0x8000_0000] {
        var bytes = encode(sampleEntry, blockIndex: 5)
        for byteIndex in 0..<4 {
            bytes[12 + byteIndex] = UInt8(truncatingIfNeeded: flags >> (8 * UInt32(byteIndex)))
        }
        let checksum = bytes.withUnsafeBytes { XXH3_64bits_withSeed($0.baseAddress, 24, 5) }
        for byteIndex in 0..<8 {
            bytes[24 + byteIndex] = UInt8(truncatingIfNeeded: checksum >> (8 * UInt64(byteIndex)))
        }
        #expect(throws: FormatError.invalidField(name: "block flags", value: UInt64(flags))) {
            try parse(bytes, blockIndex: 5)
        }
    }
}

@Test func entriesAreCheckedAgainstTheirBlockAndTheDataRegion() throws {
    let dataRange: Range<UInt64> = 8192..<100_000
    func entry(_ storage: LZ4BlockEntry.Storage, _ offset: UInt64, _ count: UInt32, _ sum: UInt64)
        -> LZ4BlockEntry
    {
        LZ4BlockEntry(
            storage: storage, dataByteOffset: offset, storedByteCount: count, dataChecksum: sum)
    }
    let valid = [
        entry(.zero, 0, 0, 0), entry(.lz4, 8192, 1, 1), entry(.lz4, 8192, 16383, 1),
        entry(.raw, 8192, 16384, 1), entry(.raw, 100_000 - 16384, 16384, 1),
    ]
    for candidate in valid {
        try candidate.validate(blockByteCount: 16384, dataRange: dataRange)
    }
    let invalid = [
        entry(.zero, 8192, 0, 0), entry(.zero, 0, 1, 0), entry(.zero, 0, 0, 1),
        entry(.lz4, 8192, 0, 1), entry(.lz4, 8192, 16384, 1), entry(.raw, 8192, 16383, 1),
        entry(.lz4, 4096, 100, 1), entry(.lz4, 99_999, 100, 1),
        entry(.raw, 100_000 - 16383, 16384, 1),
        entry(.lz4, UInt64.max - 10, 100, 1),
    ]
    for candidate in invalid {
        #expect(throws: FormatError.self, "\(candidate)") {
            try candidate.validate(blockByteCount: 16384, dataRange: dataRange)
        }
    }
    // The last block of an image may be short: a raw block is exactly as long as it is.
    try entry(.raw, 8192, 1000, 1).validate(blockByteCount: 1000, dataRange: dataRange)
}
