import CowFormat
import CowStore
import Foundation
import Synchronization
import SystemPackage
import Testing

/// 3 MiB + 777 bytes: never a whole number of blocks.
private let mixedByteCount = 3 << 20 + 777

@Test(arguments: [CompressionLevel.fast, .high], [UInt64(16384), 65536, 1 << 20])
func compressedImageReadsBackTheSourceByteForByte(level: CompressionLevel, blockByteCount: UInt64)
    throws
{
    let scratch = try Scratch()
    let seed = 100 + blockByteCount
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: mixedByteCount, seed: seed)
    let summary = try compressImage(
        scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: blockByteCount, level: level)
    #expect(summary.inputByteCount == UInt64(mixedByteCount))
    #expect(summary.outputByteCount < UInt64(mixedByteCount))
    // A small cache, so reads keep evicting and reloading blocks.
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 0)
    #expect(image.byteCount == UInt64(mixedByteCount))
    #expect(image.kindName == "cowbd-lz4")
    #expect(try image.readBytes(at: 0, count: mixedByteCount) == source)
    var generator = SplitMix64(seed: seed)
    for _ in 0..<400 {
        let offset = Int(generator.next() % UInt64(mixedByteCount))
        let count = min(mixedByteCount - offset, 1 + Int(generator.next() % 300_000))
        let actual = try image.readBytes(at: UInt64(offset), count: count)
        #expect(actual == Array(source[offset..<(offset + count)]), "seed \(seed) at \(offset)")
    }
}

@Test func compressedFingerprintEqualsTheRawSources() throws {
    let scratch = try Scratch()
    for (index, byteCount) in [1000, 1 << 20, 5 << 20 + 3].enumerated() {
        let raw = scratch.path("raw\(index)")
        _ = try makeMixedImage(at: raw, byteCount: byteCount, seed: UInt64(index))
        try compressImage(raw, to: scratch.path("lz4\(index)"))
        let compressed = try openCompressed(scratch.path("lz4\(index)"))
        let expected = try RawBaseImage(path: FilePath(raw)).fingerprint()
        #expect(try compressed.fingerprint() == expected)
        #expect(compressed.header.fingerprint == expected)
    }
}

@Test func zeroBlocksAreHolesAndTakeNoSpace() throws {
    let scratch = try Scratch()
    // Block 0 random, blocks 1-2 written zeros, block 3 a sparse hole, block 4 text.
    var bytes = (0..<65536).map { _ in UInt8.random(in: 0...255) }
    bytes += [UInt8](repeating: 0, count: 3 * 65536)
    bytes += Array(String(repeating: "text ", count: 13108).utf8)[..<65536]
    try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("raw")))
    // No dictionary: trained on this image, it would hold block 0's random bytes.
    let summary = try compressImage(
        scratch.path("raw"), to: scratch.path("lz4"), usesDictionary: false)
    #expect(summary.zeroBlockCount == 3)
    #expect(summary.rawBlockCount == 1)
    let image = try openCompressed(scratch.path("lz4"))
    #expect(
        try image.extent(at: 0, maxByteCount: 5 << 16)
            == SourceExtent(byteCount: 65536, isHole: false))
    #expect(
        try image.extent(at: 70000, maxByteCount: 5 << 16)
            == SourceExtent(byteCount: 4 * 65536 - 70000, isHole: true))
    #expect(
        try image.extent(at: 65536, maxByteCount: 1000)
            == SourceExtent(byteCount: 1000, isHole: true))
    #expect(
        try image.extent(at: 4 << 16, maxByteCount: 1 << 30)
            == SourceExtent(byteCount: 65536, isHole: false))
    #expect(try image.entry(ofBlock: 2) == .zero)
    // Zero blocks are answered without the cache; data blocks only once loaded (on tmpfs,
    // which has no `RWF_NOWAIT`, a small read cannot load its block on the spot either).
    #expect(image.cachedBytes(at: 65536, count: 3 << 16) == [UInt8](repeating: 0, count: 3 << 16))
    #expect(image.cachedBytes(at: 100, count: 10) == nil)
    #expect(try image.readBytes(at: 100, count: 10) == Array(bytes[100..<110]))
    #expect(image.cachedBytes(at: 1000, count: 70000) == Array(bytes[1000..<71000]))
    #expect(image.cachedBytes(at: 4 << 16, count: 10) == nil)
}

@Test func aDamagedBlockFailsOnlyTheReadsThatTouchIt() throws {
    let scratch = try Scratch()
    let (source, damagedBlock, entry) = try makeImageWithADamagedBlock(
        in: scratch, amongBlocks: 0..<128)
    let image = try openCompressed(scratch.path("lz4"))
    let blockStart = Int(damagedBlock) * 16384
    for (offset, count) in [(blockStart, 1), (blockStart + 100, 4096), (blockStart - 10, 20)]
    where offset >= 0 {
        #expect {
            try image.readBytes(at: UInt64(offset), count: count)
        } throws: { error in
            let text = "\(error)"
            return text.contains("block \(damagedBlock)") && text.contains("checksum mismatch")
                && text.contains("at byte \(entry.dataByteOffset)")
        }
    }
    for blockIndex in 0..<128 where blockIndex != Int(damagedBlock) {
        let start = blockIndex * 16384
        #expect(
            try image.readBytes(at: UInt64(start), count: 16384)
                == Array(source[start..<(start + 16384)]))
    }
    let verification = image.verify()
    #expect(verification.damagedBlockCount == 1)
    #expect(verification.damagedBlocks.first?.blockIndex == damagedBlock)
}

@Test func aDamagedIndexEntryFailsOnlyItsBlock() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 6)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    for (damagedBlock, byteInEntry) in [(UInt64(3), 0), (17, 12), (40, 31)] {
        try compressImage(
            scratch.path("raw"), to: scratch.path("copy"), blockByteCount: 16384,
            replacesExisting: true)
        try flipByte(in: scratch.path("copy"), at: 4096 + damagedBlock * 32 + UInt64(byteInEntry))
        let image = try openCompressed(scratch.path("copy"))
        #expect(image.damagedEntryCount == 1)
        #expect {
            try image.readBytes(at: damagedBlock * 16384 + 5, count: 10)
        } throws: { error in
            "\(error)".contains("block \(damagedBlock): index entry damaged")
        }
        #expect(try image.extent(at: damagedBlock * 16384, maxByteCount: 16384).isHole == false)
        let others = (0..<UInt64(64)).filter { $0 != damagedBlock }
        for blockIndex in others {
            let start = Int(blockIndex) * 16384
            #expect(
                try image.readBytes(at: UInt64(start), count: 16384)
                    == Array(source[start..<(start + 16384)]))
        }
        #expect(image.verify().damagedBlockCount == 1)
    }
}

@Test func truncatedOrGarbledImagesAreRefusedAtOpen() throws {
    let scratch = try Scratch()
    _ = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 7)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let whole = try fileBytes(scratch.path("lz4"))
    var generator = SplitMix64(seed: 7)
    var lengths = [
        0, 7, 8, 127, 128, 4095, 4096, whole.count - 129, whole.count - 128, whole.count - 1,
    ]
    lengths += (0..<40).map { _ in Int(generator.next() % UInt64(whole.count)) }
    for length in lengths {
        try Data(whole[..<length]).write(to: URL(fileURLWithPath: scratch.path("cut")))
        #expect(throws: StoreError.self, "length \(length)") {
            _ = try CompressedBaseImage(path: FilePath(scratch.path("cut")))
        }
    }
    // Flipped bytes in the header, in the footer, or a byte appended: refused, never a crash.
    for offset in [0, 9, 17, 30, 70, 90, 125, whole.count - 100, whole.count - 1] {
        var bytes = whole
        bytes[offset] ^= 0x04
        try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("bad")))
        #expect(throws: StoreError.self, "byte \(offset)") {
            _ = try CompressedBaseImage(path: FilePath(scratch.path("bad")))
        }
    }
    try Data(whole + [0]).write(to: URL(fileURLWithPath: scratch.path("long")))
    #expect(throws: StoreError.self) {
        _ = try CompressedBaseImage(path: FilePath(scratch.path("long")))
    }
}

@Test func randomGarbageInTheIndexOrDataNeverCrashesOrLies() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 8)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let whole = try fileBytes(scratch.path("lz4"))
    var generator = SplitMix64(seed: 8)
    var openedCount = 0
    var failedReadCount = 0
    for round in 0..<30 {
        var bytes = whole
        for _ in 0..<8 {
            let offset = 4096 + Int(generator.next() % UInt64(whole.count - 4096 - 128))
            bytes[offset] = UInt8(truncatingIfNeeded: generator.next())
        }
        try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("garbled")))
        guard let image = try? openCompressed(scratch.path("garbled")) else { continue }
        openedCount += 1
        for blockIndex in 0..<64 {
            let start = blockIndex * 16384
            // Every read either fails or returns exactly the source's bytes.
            guard let actual = try? image.readBytes(at: UInt64(start), count: 16384) else {
                failedReadCount += 1
                continue
            }
            #expect(
                actual == Array(source[start..<(start + 16384)]),
                "round \(round), block \(blockIndex)")
        }
    }
    // Most garbled files still open (damage in block data or entries is local) and fail reads.
    #expect(openedCount > 20 && failedReadCount > 100)
}

@Test func concurrentReadersOfOneBlockDecompressItOnce() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 4 << 20, seed: 9)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 1 << 20)
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 64 << 20)
    let failures = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 32) { reader in
        let offset = 2 << 20 + reader * 4096
        let bytes = try? image.readBytes(at: UInt64(offset), count: 4096)
        if bytes != Array(source[offset..<(offset + 4096)]) { failures.withLock { $0 += 1 } }
    }
    #expect(failures.withLock { $0 } == 0)
    // A miss decompresses the prefix its read needs; a reader further in loads the whole
    // block once more. Never more than that, however many readers.
    #expect(image.loadedBlockCount <= 2)
}

@Test func smallReadsThroughOneBlockDecompressItAtMostTwice() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 4 << 20, seed: 12)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 1 << 20)
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 64 << 20)
    // Backwards from the end, then forwards from the start: every offset of block 1.
    let offsets =
        Array(stride(from: 2 << 20 - 4096, through: 1 << 20, by: -65536))
        + Array(stride(from: 1 << 20, to: 2 << 20, by: 4096))
    for offset in offsets {
        #expect(
            try image.readBytes(at: UInt64(offset), count: 4096)
                == Array(source[offset..<(offset + 4096)]))
    }
    #expect(image.loadedBlockCount == 1, "the first read, at the block's end, needs all of it")
    #expect(
        try image.readBytes(at: 3 << 20, count: 100) == Array(source[(3 << 20)..<(3 << 20 + 100)]))
    #expect(
        try image.readBytes(at: 3 << 20 + 500_000, count: 100)
            == Array(source[(3 << 20 + 500_000)..<(3 << 20 + 500_100)]))
    #expect(image.loadedBlockCount == 3, "block 3: a 100-byte prefix, then all of it")
}

@Test func manyReadersThroughATinyCacheAllGetTheSourceBytes() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 4 << 20, seed: 10)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    // Eight slots for 256 blocks and sixteen threads: readers wait for slots and evict.
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 0)
    let failures = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 16) { reader in
        var generator = SplitMix64(seed: UInt64(reader))
        for _ in 0..<300 {
            let offset = Int(generator.next() % UInt64(source.count - 40000))
            let count = 1 + Int(generator.next() % 40000)
            if (try? image.readBytes(at: UInt64(offset), count: count))
                != Array(source[offset..<(offset + count)])
            {
                failures.withLock { $0 += 1 }
            }
        }
    }
    #expect(failures.withLock { $0 } == 0)
}

/// A sparse file whose valid header claims an index of 2^40 bytes (a 2^49-byte image of 16 KiB
/// blocks): open must refuse it from the header alone, not try to read a terabyte into memory.
@Test func anIndexTooLargeToHoldIsRefusedBeforeItIsRead() throws {
    let scratch = try Scratch()
    var header = try LZ4ImageHeader(
        geometry: LZ4BlockGeometry(shift: 14), virtualByteCount: 1 << 20,
        fingerprint: BaseFingerprint(low: 1, high: 2), compressionLevel: 0,
        fileByteCount: 8192 + UInt64(LZ4ImageHeader.recordByteCount))
    header.fields.virtualByteCount = 1 << 49
    let layout = LZ4ImageHeader.layout(geometry: header.geometry, virtualByteCount: 1 << 49)
    #expect(layout.indexByteCount == 1 << 40)
    header.fields.mapByteCount = layout.indexByteCount
    header.fields.dataByteOffset = layout.dataByteOffset
    header.fileByteCount = layout.dataByteOffset + UInt64(LZ4ImageHeader.recordByteCount)
    let path = FilePath(scratch.path("huge-index.lz4"))
    let descriptor = try FileDescriptor.open(
        path, .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite])
    let record = header.encoded()
    _ = try record.withUnsafeBytes { try descriptor.writeAll(toAbsoluteOffset: 0, $0) }
    _ = try record.withUnsafeBytes {
        try descriptor.writeAll(toAbsoluteOffset: Int64(header.footerByteOffset), $0)
    }
    try descriptor.close()

    let started = ContinuousClock.now
    #expect {
        _ = try CompressedBaseImage(path: path)
    } throws: { error in
        "\(error)".contains("huge-index.lz4") && "\(error)".contains("index size")
    }
    #expect(ContinuousClock.now - started < .seconds(5))
}

@Test func wholeBlockReadsComeStraightFromTheFileAndLeaveTheCacheAlone() throws {
    let scratch = try Scratch()
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: mixedByteCount, seed: 31)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 64 << 20)
    // Aligned 1 MiB reads, the last one short, as a sequential reader sends them.
    for offset in stride(from: 0, to: mixedByteCount, by: 1 << 20) {
        let count = min(1 << 20, mixedByteCount - offset)
        #expect(
            try image.readBytes(at: UInt64(offset), count: count)
                == Array(source[offset..<(offset + count)]), "at \(offset)")
    }
    // Every block was read whole (the last one, short, too): none went through the cache.
    #expect(image.cachedBlockCount == 0)
    // A read with a partial block at each end: those two go through the cache.
    let offset = 5 * 16384 + 100
    #expect(
        try image.readBytes(at: UInt64(offset), count: 10 * 16384)
            == Array(source[offset..<(offset + 10 * 16384)]))
    #expect(image.cachedBlockCount <= 2)
}

@Test func aReadOfWholeBlocksAcrossADamagedOneFailsNamingIt() throws {
    let scratch = try Scratch()
    let (source, damagedBlock, entry) = try makeImageWithADamagedBlock(
        in: scratch, amongBlocks: 1..<127)
    let image = try openCompressed(scratch.path("lz4"))
    let blockStart = Int(damagedBlock) * 16384
    for (offset, count) in [(blockStart, 16384), (blockStart - 16384, 3 * 16384), (0, 2 << 20)] {
        #expect {
            try image.readBytes(at: UInt64(offset), count: count)
        } throws: { error in
            let text = "\(error)"
            return text.contains("block \(damagedBlock)") && text.contains("checksum mismatch")
                && text.contains("at byte \(entry.dataByteOffset)")
        }
    }
    // The whole blocks on either side still read.
    for (offset, count) in [(0, blockStart), (blockStart + 16384, (2 << 20) - blockStart - 16384)] {
        #expect(
            try image.readBytes(at: UInt64(offset), count: count)
                == Array(source[offset..<(offset + count)]))
    }
}

/// A 2 MiB mixed image compressed in 16 KiB blocks at scratch "lz4", with one byte flipped in
/// the middle of the stored bytes of its first LZ4 block among `candidates` (the first
/// candidate if none is LZ4): the source bytes, that block and its index entry.
private func makeImageWithADamagedBlock(
    in scratch: Scratch, amongBlocks candidates: Range<UInt64>
) throws -> (source: [UInt8], damagedBlock: UInt64, entry: LZ4BlockEntry) {
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 2 << 20, seed: 5)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let damagedBlock =
        try candidates.first {
            try openCompressed(scratch.path("lz4")).entry(ofBlock: $0).storage == .lz4
        } ?? candidates.lowerBound
    let entry = try openCompressed(scratch.path("lz4")).entry(ofBlock: damagedBlock)
    try flipByte(
        in: scratch.path("lz4"), at: entry.dataByteOffset + UInt64(entry.storedByteCount / 2))
    return (source, damagedBlock, entry)
}

@Test(arguments: [CompressionLevel.fast, .high], [0, 64 << 20])
func smallReadsAtEveryOffsetOfABlockEqualTheSource(level: CompressionLevel, cacheByteCount: Int)
    throws
{
    let scratch = try Scratch(onDisk: true)  // tmpfs has no RWF_NOWAIT
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 41)
    try compressImage(
        scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384, level: level)
    let probe = try openCompressed(scratch.path("lz4"))
    let lz4BlockCount = try (0..<64).count { try probe.entry(ofBlock: $0).storage == .lz4 }
    #expect(lz4BlockCount >= 8, "LZ4 blocks, not only raw and zero ones")
    // Each 4 KiB piece of each block, in an order that visits a block's end before its start,
    // read on the spot (`readIfReady`) from a fresh image and by a pool thread (`read`) from
    // another: every one equals the source.
    let inline = try openCompressed(scratch.path("lz4"), cacheByteCount: cacheByteCount)
    let pooled = try openCompressed(scratch.path("lz4"), cacheByteCount: cacheByteCount)
    for offsetInBlock in [12288, 4096, 0, 8192, 12288 + 100, 16384 - 1] {
        for blockStart in stride(from: 0, to: 1 << 20, by: 16384) {
            let offset = blockStart + offsetInBlock
            let count = min(4096, 16384 - offsetInBlock)
            let expected = Array(source[offset..<(offset + count)])
            #expect(
                inline.cachedBytes(at: UInt64(offset), count: count) == expected, "at \(offset)")
            #expect(
                try pooled.readBytes(at: UInt64(offset), count: count) == expected, "at \(offset)")
        }
    }
}

@Test func aSmallReadOfAnUncachedBlockIsDecompressedOnTheSpotOnce() throws {
    let scratch = try Scratch(onDisk: true)  // tmpfs has no RWF_NOWAIT
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 1 << 20, seed: 42)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 64 << 20)
    let blockIndex = try #require(
        try (0..<63).first {
            try image.entry(ofBlock: $0).storage == .lz4
                && image.entry(ofBlock: $0 + 1).storage == .lz4
        })
    let blockStart = Int(blockIndex) * 16384
    // A read at the block's start decompresses a prefix; one at its end the whole block.
    for offset in [blockStart, blockStart + 12288, blockStart + 4096, blockStart + 12288] {
        #expect(
            image.cachedBytes(at: UInt64(offset), count: 4096)
                == Array(source[offset..<(offset + 4096)]))
    }
    #expect(image.loadedBlockCount == 2)
    #expect(image.cachedBlockCount == 1)
    // A whole block, or a range over two, is left to `read` (no cache, or several blocks).
    #expect(image.cachedBytes(at: UInt64(blockStart + 16384), count: 16384) == nil)
    #expect(image.cachedBytes(at: UInt64(blockStart + 16384 - 10), count: 4096) == nil)
    #expect(image.loadedBlockCount == 2)
}

@Test func aDamagedBlockIsNeverAnsweredOnTheSpot() throws {
    let scratch = try Scratch(onDisk: true)  // tmpfs has no RWF_NOWAIT
    let (source, damagedBlock, entry) = try makeImageWithADamagedBlock(
        in: scratch, amongBlocks: 0..<128)
    let image = try openCompressed(scratch.path("lz4"))
    let blockStart = Int(damagedBlock) * 16384
    for offset in [blockStart, blockStart + 4096, blockStart + 12288] {
        // Twice: a failed load leaves nothing behind in the cache.
        for _ in 0..<2 {
            #expect(image.cachedBytes(at: UInt64(offset), count: 4096) == nil)
            #expect {
                try image.readBytes(at: UInt64(offset), count: 4096)
            } throws: { error in
                "\(error)".contains("block \(damagedBlock)")
                    && "\(error)".contains("checksum mismatch")
                    && "\(error)".contains("at byte \(entry.dataByteOffset)")
            }
        }
    }
    let dataBlocks = try (0..<128).filter { try image.entry(ofBlock: $0).storage != .zero }
    let neighbourBlock = try #require(dataBlocks.first { $0 != damagedBlock })
    let neighbour = Int(neighbourBlock) * 16384
    #expect(
        image.cachedBytes(at: UInt64(neighbour), count: 4096)
            == Array(source[neighbour..<(neighbour + 4096)]))
    #expect(image.cachedBlockCount == 1)
}

@Test func readersOnTheSpotAndPoolReadersThroughATinyCacheAllGetTheSourceBytes() throws {
    let scratch = try Scratch(onDisk: true)  // tmpfs has no RWF_NOWAIT
    let source = try makeMixedImage(at: scratch.path("raw"), byteCount: 4 << 20, seed: 43)
    try compressImage(scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    // Eight slots for 256 blocks: loads on the spot meet slots loading, pinned or too short.
    let image = try openCompressed(scratch.path("lz4"), cacheByteCount: 0)
    let failures = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 16) { reader in
        var generator = SplitMix64(seed: 1000 + UInt64(reader))
        for _ in 0..<400 {
            let offset = Int(generator.next() % UInt64(source.count - 4096))
            let count = 1 + Int(generator.next() % 4096)
            let expected = Array(source[offset..<(offset + count)])
            let bytes =
                reader % 2 == 0
                ? image.cachedBytes(at: UInt64(offset), count: count)
                : try? image.readBytes(at: UInt64(offset), count: count)
            if let bytes, bytes != expected { failures.withLock { $0 += 1 } }
            if bytes == nil && reader % 2 == 1 { failures.withLock { $0 += 1 } }
        }
    }
    #expect(failures.withLock { $0 } == 0)
}
