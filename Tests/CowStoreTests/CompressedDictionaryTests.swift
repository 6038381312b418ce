// Format version 2's shared dictionary: images made with it read back, a damaged dictionary
// fails only the LZ4 blocks' reads, and a version 1 image (a fixture made before version 2)
// still reads byte for byte.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import TestSupport
import Testing

/// The source of Tests/Fixtures/compressed-v1-16k-high.lz4, made by `cowbd compress
/// --block-size 16K --level high` before format version 2: 48 KiB of numbered text lines,
/// 32 KiB of zeros, 16 KiB of SplitMix64 (seed 18) bytes, then 50,152 more bytes of the text.
private func version1FixtureSource() -> [UInt8] {
    var text: [UInt8] = []
    var lineNumber = 0
    while text.count < 120_000 {
        lineNumber += 1
        text += Array("line \(lineNumber): a cowbd-lz4 version 1 fixture\n".utf8)
    }
    var generator = SplitMix64(seed: 18)
    var noise: [UInt8] = []
    while noise.count < 16384 {
        let value = generator.next()
        noise += (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }
    return Array(text[..<49152]) + [UInt8](repeating: 0, count: 32768) + noise
        + Array(text[49152..<(49152 + 50152)])
}

private let version1FixturePath =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/compressed-v1-16k-high.lz4").path

@Test func aVersion1ImageStillReadsByteForByte() throws {
    let source = version1FixtureSource()
    let image = try openCompressed(version1FixturePath, cacheByteCount: 0)
    #expect(image.header.version == 1)
    #expect(image.header.dictionaryByteCount == 0)
    #expect(image.byteCount == UInt64(source.count))
    #expect(try image.readBytes(at: 0, count: source.count) == source)
    var generator = SplitMix64(seed: 1)
    for _ in 0..<200 {
        let offset = Int(generator.next() % UInt64(source.count))
        let count = min(source.count - offset, 1 + Int(generator.next() % 40000))
        #expect(
            try image.readBytes(at: UInt64(offset), count: count)
                == Array(source[offset..<(offset + count)]), "at \(offset)")
    }
    let verification = image.verify()
    #expect(verification.isIntact)
    #expect(verification.zeroBlockCount == 2 && verification.rawBlockCount == 1)
    #expect(try image.fingerprint() == image.header.fingerprint)
}

/// `byteCount` bytes of words drawn from one vocabulary of 3,000 random words: each 16 KiB
/// block repeats few of its own words, but the whole image repeats them all, as files of one
/// kind do on a disk.
private func makeVocabularyImage(at path: String, byteCount: Int, seed: UInt64) throws -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    let vocabulary = (0..<3000).map { _ in
        (0..<(6 + Int(generator.next() % 15))).map { _ in
            UInt8(ascii: "a") + UInt8(generator.next() % 26)
        }
    }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(byteCount + 32)
    while bytes.count < byteCount {
        bytes += vocabulary[Int(generator.next() % UInt64(vocabulary.count))]
        bytes.append(generator.next() % 8 == 0 ? 10 : 32)
    }
    bytes.removeLast(bytes.count - byteCount)
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return bytes
}

@Test func aSharedDictionaryShrinksSmallBlocksAndReadsBack() throws {
    let scratch = try Scratch()
    let source = try makeVocabularyImage(at: scratch.path("raw"), byteCount: 2 << 20, seed: 21)
    let withDictionary = try compressImage(
        scratch.path("raw"), to: scratch.path("dictionary"), blockByteCount: 16384, level: .high)
    let image = try ImageCompressor.openSource(at: FilePath(scratch.path("raw")))
    let withoutDictionary = try ImageCompressor.compress(
        image, to: FilePath(scratch.path("alone")),
        options: .init(
            geometry: try LZ4BlockGeometry(blockByteCount: 16384), level: .high, threadCount: 2,
            replacesExisting: false, usesDictionary: false))
    #expect(withDictionary.dictionaryByteCount > 0)
    #expect(withDictionary.header.version == 2)
    #expect(withoutDictionary.dictionaryByteCount == 0)
    #expect(withoutDictionary.header.dictionaryByteCount == 0)
    #expect(withDictionary.outputByteCount < withoutDictionary.outputByteCount)
    for path in ["dictionary", "alone"] {
        let compressed = try openCompressed(scratch.path(path), cacheByteCount: 0)
        #expect(try compressed.readBytes(at: 0, count: source.count) == source, "\(path)")
        #expect(compressed.verify().isIntact, "\(path)")
    }
}

@Test func aDamagedDictionaryFailsOnlyTheReadsOfLZ4Blocks() throws {
    let scratch = try Scratch()
    // Blocks 0-3 text (LZ4), block 4 random, blocks 5-6 zeros, blocks 7-15 text.
    var text: [UInt8] = []
    var lineNumber = 0
    while text.count < 13 * 16384 {
        lineNumber += 1
        text += Array("entry \(lineNumber * 7919 % 100_003) of a dictionary test\n".utf8)
    }
    var generator = SplitMix64(seed: 9)
    let noise = (0..<16384).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
    let bytes =
        Array(text[..<(4 * 16384)]) + noise + [UInt8](repeating: 0, count: 2 * 16384)
        + Array(text[(4 * 16384)..<(13 * 16384)])
    try Data(bytes).write(to: URL(fileURLWithPath: scratch.path("raw")))
    let summary = try compressImage(
        scratch.path("raw"), to: scratch.path("lz4"), blockByteCount: 16384)
    let header = summary.header
    try #require(header.dictionaryByteCount > 0)
    #expect(summary.zeroBlockCount == 2)
    let lz4BlockCount = 16 - summary.zeroBlockCount - summary.rawBlockCount
    try flipByte(
        in: scratch.path("lz4"), at: header.dataByteOffset + UInt64(header.dictionaryByteCount / 2))

    let image = try openCompressed(scratch.path("lz4"))
    #expect(image.dictionaryProblem?.contains("dictionary damaged") == true)
    #expect {
        try image.readBytes(at: 100, count: 4096)
    } throws: { error in
        let text = "\(error)"
        return text.contains("block 0: dictionary damaged")
            && text.contains("at byte \(header.dataByteOffset)")
    }
    // The random block is LZ4 too if the dictionary (trained on this image) holds some of it.
    if try image.entry(ofBlock: 4).storage == .raw {
        #expect(try image.readBytes(at: 4 * 16384, count: 16384) == noise)
    }
    #expect(
        try image.readBytes(at: 5 * 16384, count: 2 * 16384)
            == [UInt8](repeating: 0, count: 2 * 16384))
    let verification = image.verify()
    #expect(!verification.isIntact)
    #expect(verification.dictionaryProblem != nil)
    #expect(verification.damagedBlockCount == lz4BlockCount)
    #expect(lz4BlockCount >= 13)
}
