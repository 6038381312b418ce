import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

@Test func aRecordedWriteAndFlushPutTheDataBeforeItsSyncAndTheBitmapAfter() throws {
    let scratch = try Scratch()
    let (disk, io) = try openRecordedStore(in: scratch, baseByteCount: 1 << 20, seed: 7)
    defer { disk.close() }
    let header = disk.store.header
    let before = io.events.count
    try disk.writeBytes(
        [UInt8](repeating: 0x5A, count: 4096), at: 8192, scratch: disk.makeScratch())
    try disk.flush()
    let events = Array(io.events[before...])
    let dataWrite = StoreIOEvent.write(
        byteOffset: header.dataByteOffset + 8192, bytes: [UInt8](repeating: 0x5A, count: 4096))
    var page = [UInt8](repeating: 0, count: ChunkBitmap.pageByteCount)
    page[0] = 0b100  // chunk 2
    let bitmapWrite = StoreIOEvent.write(byteOffset: header.bitmapByteOffset, bytes: page)
    #expect(events == [dataWrite, .synchronizeAll, bitmapWrite, .synchronizeData])
}

@Test func everyStoreIOOfADiskGoesThroughItsSeam() throws {
    let scratch = try Scratch()
    let (disk, io) = try openRecordedStore(in: scratch, baseByteCount: 1 << 20, seed: 8)
    defer { disk.close() }
    let chunkScratch = disk.makeScratch()
    try disk.writeBytes([1, 2, 3], at: 5000, scratch: chunkScratch)
    try disk.writeZeroes(at: 65536, byteCount: 8192, mayPunch: false, scratch: chunkScratch)
    try disk.trim(at: 65536, byteCount: 4096)
    #expect(try disk.readBytes(at: 5000, count: 3) == [1, 2, 3])
    _ = try disk.extents(at: 0, byteCount: disk.byteCount, maxExtentCount: 16)
    let calls = io.calls
    for operation in [StoreIOOperation.write, .zeroRange, .punchHole, .read, .nextData] {
        #expect(calls.contains(operation), "no \(operation) seen")
    }
}

/// The store writes a long buffer in pieces of at most 256 KiB: every piece must land where it
/// belongs, a short last piece included, across a reopen.
@Test func aWriteOfSeveralPwritesReadsBackWholeAfterReopening() throws {
    let scratch = try Scratch()
    var expected = try makeBase(at: scratch.path("base"), byteCount: 3 << 20, seed: 9)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    var generator = SplitMix64(seed: 9)
    let data = randomBytes((1 << 20) + (256 << 10) + 5000, &generator)
    let byteOffset = 4096 * 3 + 77
    expected.replaceSubrange(byteOffset..<(byteOffset + data.count), with: data)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    try disk.writeBytes(data, at: UInt64(byteOffset), scratch: disk.makeScratch())
    try disk.flush()
    disk.close()
    let reopened = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { reopened.close() }
    #expect(try reopened.readBytes(at: 0, count: expected.count) == expected)
}

/// A large write into chunks the store lacks allocates their blocks before writing them (it
/// costs the file system less than filling holes); a rewrite of held chunks and a small write
/// do not. The allocation changes no byte, records no event and takes no space beyond the
/// written chunks.
@Test func aLargeFirstWriteIsAllocatedAheadAndARewriteIsNot() throws {
    let scratch = try Scratch()
    let (disk, io) = try openRecordedStore(in: scratch, baseByteCount: 4 << 20, seed: 10)
    defer { disk.close() }
    let chunkScratch = disk.makeScratch()
    var generator = SplitMix64(seed: 10)
    func allocations() -> Int { io.calls.count { $0 == .allocateAhead } }
    let eventsBefore = io.events.count
    try disk.writeBytes(randomBytes(1 << 20, &generator), at: 1 << 20, scratch: chunkScratch)
    #expect(allocations() == 1)
    #expect(io.events[eventsBefore...].allSatisfy { if case .write = $0 { true } else { false } })
    let rewritten = randomBytes(1 << 20, &generator)
    try disk.writeBytes(rewritten, at: 1 << 20, scratch: chunkScratch)
    try disk.writeBytes([7, 7, 7], at: 3 << 20, scratch: chunkScratch)
    #expect(allocations() == 1)
    try disk.flush()
    #expect(try disk.readBytes(at: 1 << 20, count: 1 << 20) == rewritten)
    #expect(try disk.store.allocatedDataByteCount() == (1 << 20) + 4096)
}

/// A store over a fresh base of `baseByteCount` random bytes in `scratch`, opened with every
/// I/O of its file recorded.
private func openRecordedStore(in scratch: Scratch, baseByteCount: Int, seed: UInt64) throws
    -> (VirtualDisk, TestStoreIO)
{
    _ = try makeBase(at: scratch.path("base"), byteCount: baseByteCount, seed: seed)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    return try openDiskWithTestIO(at: scratch.path("cow"))
}
