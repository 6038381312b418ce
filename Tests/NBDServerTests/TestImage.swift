// The base image every server test starts from, and the in-memory model of what the export
// must read back. Deterministic, so a failing comparison names a reproducible byte.

import Foundation

/// Layout of the test base image: pseudo-random bytes, one stretch of written zeros, one
/// sparse hole (never written, so the file system reports it as a hole), and a size that is
/// not a multiple of 4 KiB so the last chunk is partial.
enum TestImage {
    static let byteCount = 6 * 1024 * 1024 + 2560
    /// Zeros that are stored as data in the base file (allocated, but reading as zero).
    static let writtenZeroRange = (2 * 1024 * 1024 + 1000)..<(2 * 1024 * 1024 + 300_000)
    /// Never written: a hole in the base file, aligned to 64 KiB so any file system keeps it.
    static let sparseHoleRange = (4 * 1024 * 1024)..<(5 * 1024 * 1024)
    static let seed: UInt64 = 0xC0FF_EE00_2024

    /// The expected bytes of the base, computed once per test process.
    static let bytes: [UInt8] = {
        var generator = SplitMix64(seed: seed)
        var bytes = [UInt8](repeating: 0, count: byteCount)
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for wordIndex in words.indices { words[wordIndex] = generator.next() }
        }
        for range in [writtenZeroRange, sparseHoleRange] {
            bytes.replaceSubrange(range, with: repeatElement(0, count: range.count))
        }
        return bytes
    }()

    /// Writes the base image to `path`, skipping the sparse hole.
    static func write(to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else {
            throw TestFailure("cannot create base image \(path)")
        }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(bytes[..<sparseHoleRange.lowerBound]))
        try handle.seek(toOffset: UInt64(sparseHoleRange.upperBound))
        try handle.write(contentsOf: Data(bytes[sparseHoleRange.upperBound...]))
        try handle.truncate(atOffset: UInt64(byteCount))
    }
}

/// What the export must contain: the base bytes plus every acknowledged change.
struct DiskModel {
    var bytes: [UInt8] = TestImage.bytes

    var byteCount: UInt64 { UInt64(bytes.count) }

    mutating func write(_ data: [UInt8], at byteOffset: UInt64) {
        let start = Int(byteOffset)
        bytes.replaceSubrange(start..<(start + data.count), with: data)
    }

    mutating func zero(at byteOffset: UInt64, byteCount: UInt64) {
        let start = Int(byteOffset)
        bytes.replaceSubrange(
            start..<(start + Int(byteCount)), with: repeatElement(0, count: Int(byteCount)))
    }

    func read(at byteOffset: UInt64, byteCount: Int) -> [UInt8] {
        let start = Int(byteOffset)
        return Array(bytes[start..<(start + byteCount)])
    }
}

/// Deterministic data for a write, distinct per seed.
func patternBytes(count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
}

/// Where two byte arrays first differ, for a readable failure message; nil when equal.
func firstDifference(_ actual: [UInt8], _ expected: [UInt8], base byteOffset: UInt64 = 0)
    -> String?
{
    if actual == expected { return nil }
    guard actual.count == expected.count else {
        return "got \(actual.count) bytes, expected \(expected.count)"
    }
    let index = actual.indices.first { actual[$0] != expected[$0] } ?? 0
    return "first difference at byte offset \(byteOffset + UInt64(index)): got \(actual[index]),"
        + " expected \(expected[index])"
}
