import CowFormat
import CowStore
import Foundation
import SystemPackage

// SplitMix64, TestFailure and the process helpers, for every file of this target.
@_exported import TestSupport

/// A fresh folder, removed when the value goes away. On tmpfs (/dev/shm) by default, where
/// fsync costs nothing, so flush-heavy model runs stay fast; `onDisk` uses the system temp
/// folder (a real filesystem) instead.
final class Scratch {
    let url: URL
    init(onDisk: Bool = false) throws {
        let useMemory = !onDisk && FileManager.default.fileExists(atPath: "/dev/shm")
        let parent =
            useMemory ? URL(fileURLWithPath: "/dev/shm") : FileManager.default.temporaryDirectory
        url = parent.appendingPathComponent("cowbd-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Writes a base image: random bytes, a zero stretch, and a sparse hole, of `byteCount` bytes.
func makeBase(at path: String, byteCount: Int, seed: UInt64) throws -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var bytes = randomBytes(byteCount, &generator)
    // A zero stretch that is written (allocated zeros) and one left as a hole.
    let zeroStart = byteCount / 4
    let zeroEnd = min(byteCount, zeroStart + 70_000)
    bytes.replaceSubrange(zeroStart..<zeroEnd, with: repeatElement(0, count: zeroEnd - zeroStart))
    let holeStart = (byteCount / 2) & ~0xFFFF
    let holeEnd = min(byteCount, holeStart + 3 * 65536)
    bytes.replaceSubrange(holeStart..<holeEnd, with: repeatElement(0, count: holeEnd - holeStart))
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.write(contentsOf: Data(bytes[..<holeStart]))
    try handle.seek(toOffset: UInt64(holeEnd))
    try handle.write(contentsOf: Data(bytes[holeEnd...]))
    try handle.truncate(atOffset: UInt64(byteCount))
    try handle.close()
    return bytes
}

func createStore(
    at path: String, base: String, chunkByteCount: UInt64 = 4096, virtualByteCount: UInt64? = nil
) throws {
    let image = try RawBaseImage(path: FilePath(base))
    try StoreFile.create(
        at: FilePath(path), base: image, basePathGiven: base,
        options: .init(
            geometry: try ChunkGeometry(chunkByteCount: chunkByteCount),
            virtualByteCount: virtualByteCount,
            createdUnixSeconds: 0))
}

extension VirtualDisk {
    func readBytes(at offset: UInt64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0xA5, count: count)
        try bytes.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return bytes
    }

    func writeBytes(_ bytes: [UInt8], at offset: UInt64, scratch: ChunkScratch, fua: Bool = false)
        throws
    {
        try bytes.withUnsafeBytes { try write(at: offset, from: $0, fua: fua, scratch: scratch) }
    }
}

func fileBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// A store "cow" over a base "base" (3 MiB + 321 bytes, or grown to 4 MiB) after 300 seeded
/// random writes, zeroes and trims, flushed and closed; returns the disk's bytes as read then.
/// The common starting point of the merge and diff tests.
func storeWithRandomChanges(_ scratch: Scratch, seed: UInt64, grow: Bool = false) throws -> [UInt8]
{
    _ = try makeBase(at: scratch.path("base"), byteCount: 3 << 20 + 321, seed: seed)
    try createStore(
        at: scratch.path("cow"), base: scratch.path("base"),
        virtualByteCount: grow ? UInt64(4 << 20) : nil)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    var generator = SplitMix64(seed: seed)
    try applyRandomChanges(to: disk, count: 300, &generator)
    try disk.flush()
    let expected = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    disk.close()
    return expected
}

/// `count` random writes, zeroes and trims of up to 50,000 bytes at random offsets; returns the
/// ranges they touched.
@discardableResult
func applyRandomChanges(to disk: VirtualDisk, count: Int, _ generator: inout SplitMix64) throws
    -> [Range<UInt64>]
{
    let chunkScratch = disk.makeScratch()
    var touched: [Range<UInt64>] = []
    for _ in 0..<count {
        let offset = generator.next() % (disk.byteCount - 1)
        let length = min(disk.byteCount - offset, 1 + generator.next() % 50_000)
        switch generator.next() % 4 {
        case 0: try disk.trim(at: offset, byteCount: length)
        case 1: try disk.writeZeroes(at: offset, byteCount: length, scratch: chunkScratch)
        default:
            try disk.writeBytes(
                randomBytes(Int(length), &generator), at: offset, scratch: chunkScratch)
        }
        touched.append(offset..<(offset + length))
    }
    return touched
}

/// Runs `open` again while it finds the store in use, for up to a second. Other tests in this
/// process spawn `cowbd` children; between fork and exec a child briefly shares every open file
/// description, flock included, so an open right after a close can find the old lock.
func retryingWhileInUse<Result>(_ open: () throws -> Result) throws -> Result {
    for _ in 0..<100 {
        do { return try open() } catch StoreError.inUse { usleep(10_000) }
    }
    return try open()
}
