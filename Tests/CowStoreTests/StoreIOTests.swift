import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

@Test func aRecordedWriteAndFlushPutTheDataBeforeItsSyncAndTheBitmapAfter() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 7)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let (disk, io) = try openDiskWithTestIO(at: scratch.path("cow"))
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
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 8)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let (disk, io) = try openDiskWithTestIO(at: scratch.path("cow"))
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
