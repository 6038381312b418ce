import CowFormat
import TestSupport
import Testing

private func sampleHeader() throws -> StoreHeader {
    try StoreHeader(
        geometry: ChunkGeometry(shift: 16), virtualByteCount: 10 << 30 + 123,
        baseByteCount: 8 << 30,
        baseFingerprint: BaseFingerprint(low: 0x0123_4567_89ab_cdef, high: 0xfedc_ba98_7654_3210),
        fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: "../golden.img",
        basePathResolved: "/srv/images/golden.img", createdUnixSeconds: 1_790_000_000)
}

@Test func headerRoundTripsThroughItsEncoding() throws {
    let header = try sampleHeader()
    let bytes = header.encoded()
    #expect(bytes.count == 4096)
    #expect(Array(bytes[0..<8]) == Array("COWBDSTR".utf8))
    let parsed = try bytes.withUnsafeBytes { try StoreHeader(parsing: $0) }
    #expect(parsed == header)
}

@Test func headerFieldsSitAtTheDocumentedOffsets() throws {
    let bytes = try sampleHeader().encoded()
    func le64(_ at: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) }
    }
    func le32(_ at: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
    }
    #expect(le32(8) == 1)
    #expect(le32(12) == 4096)
    #expect(le32(16) == 16)
    #expect(le64(24) == 10 << 30 + 123)
    #expect(le64(32) == 8 << 30)
    #expect(le64(40) == 0x0123_4567_89ab_cdef)
    #expect(le64(48) == 0xfedc_ba98_7654_3210)
    #expect(le64(64) == 4096)
    // 10 GiB + 123 bytes in 64 KiB chunks = 163841 chunks = 20481 bytes of bitmap -> 6 pages.
    #expect(le64(72) == 6 * 4096)
    #expect(le64(80) == 1 << 20)
    #expect(bytes[1024] == 13 && bytes[1025] == 0)
    #expect(String(decoding: bytes[1026..<1039], as: UTF8.self) == "../golden.img")
}

@Test func everyTruncationOfAHeaderIsRejected() throws {
    let bytes = try sampleHeader().encoded()
    for length in [0, 1, 7, 8, 100, 4087, 4095] {
        #expect(throws: FormatError.truncated(expectedByteCount: 4096, actualByteCount: length)) {
            try Array(bytes[..<length]).withUnsafeBytes { try StoreHeader(parsing: $0) }
        }
    }
}

@Test func anyFlippedByteIsCaught() throws {
    let original = try sampleHeader().encoded()
    for offset in stride(from: 0, to: 4096, by: 37) {
        var bytes = original
        bytes[offset] ^= 0x40
        #expect(throws: FormatError.self) {
            try bytes.withUnsafeBytes { try StoreHeader(parsing: $0) }
        }
    }
}

@Test func garbageIsNotAStore() {
    var generator = SplitMix64(seed: 7)
    for _ in 0..<50 {
        let bytes = (0..<4096).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        #expect(throws: FormatError.badMagic(expected: "cowbd store")) {
            try bytes.withUnsafeBytes { try StoreHeader(parsing: $0) }
        }
    }
}

@Test func chunkSizesOutsideTheRangeAreRefused() {
    for size: UInt64 in [0, 512, 2048, 3000, 4097, 2 << 20, 1 << 30] {
        #expect(throws: FormatError.self) { try ChunkGeometry(chunkByteCount: size) }
    }
    for shift: UInt32 in 12...20 {
        #expect((try? ChunkGeometry(chunkByteCount: 1 << UInt64(shift)))?.shift == shift)
    }
}

@Test func diskWithMoreChunksThanTheLimitIsRefused() throws {
    // Open allocates the bitmap's page table from the chunk count: a header must not be able
    // to ask for gigabytes of it (2^60 bytes of 4 KiB chunks would be 64 GiB).
    #expect(throws: FormatError.invalidField(name: "chunk count", value: 1 << 48)) {
        try StoreHeader(
            geometry: ChunkGeometry(shift: 12), virtualByteCount: 1 << 60, baseByteCount: 0,
            baseFingerprint: BaseFingerprint(low: 0, high: 0),
            fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: "b",
            basePathResolved: "/b", createdUnixSeconds: 0)
    }
    let largest = try StoreHeader(
        geometry: ChunkGeometry(shift: 12), virtualByteCount: StoreHeader.maxChunkCount << 12,
        baseByteCount: 0, baseFingerprint: BaseFingerprint(low: 0, high: 0),
        fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: "b",
        basePathResolved: "/b", createdUnixSeconds: 0)
    #expect(largest.chunkCount == StoreHeader.maxChunkCount)
}

@Test func sizesParseTheWayUsersWriteThem() throws {
    #expect(try ByteSize.parse("4096") == 4096)
    #expect(try ByteSize.parse("4K") == 4096)
    #expect(try ByteSize.parse("64KiB") == 65536)
    #expect(try ByteSize.parse("1M") == 1 << 20)
    #expect(try ByteSize.parse("2G") == 2 << 30)
    #expect(try ByteSize.parse("1T") == 1 << 40)
    for bad in ["", "K", "4X", "-1", "1.5M", "99999999999999999999", "18014398509481984K"] {
        #expect(throws: FormatError.self) { try ByteSize.parse(bad) }
    }
}

@Test func fingerprintPlanIsBoundedWhateverTheSize() {
    #expect(BaseFingerprintPlan.sampledByteCount(baseByteCount: 1 << 40) == 64 * 4096 + 2 * 65536)
    #expect(BaseFingerprintPlan.ranges(baseByteCount: 1000) == [0..<1000])
    for size: UInt64 in [(1 << 20) + 1, 5_000_000_123, 1 << 40] {
        for range in BaseFingerprintPlan.ranges(baseByteCount: size) {
            #expect(range.upperBound <= size)
        }
    }
}

@Test func mergeRecordRoundTripsAndSetsItsFeatureBit() throws {
    var header = try sampleHeader()
    let record = try MergeRecord(
        flags: MergeRecord.inPlaceFlag, targetByteCount: 10 << 30 + 123,
        targetFingerprint: BaseFingerprint(low: 5, high: 6), targetPath: "/srv/images/golden.img")
    header.setMerge(record)
    let bytes = header.encoded()
    #expect(bytes[20] == 1)
    #expect(bytes[3072] == 22 && bytes[3073] == 0)
    let parsed = try bytes.withUnsafeBytes { try StoreHeader(parsing: $0) }
    #expect(parsed.merge == record)
    header.setMerge(nil)
    let cleared = try header.encoded().withUnsafeBytes { try StoreHeader(parsing: $0) }
    #expect(cleared.merge == nil && cleared.incompatibleFeatures == 0)
}
