import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

@Test func readOfUnwrittenChunkReturnsBaseBytes() throws {
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 11)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect(try disk.readBytes(at: 12345, count: 70000) == Array(base[12345..<82345]))
}

@Test func alignedWriteAllocatesExactlyItsOwnBytes() throws {
    let scratch = try Scratch(onDisk: true)
    _ = try makeBase(at: scratch.path("base"), byteCount: 64 << 20, seed: 12)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let chunkScratch = disk.makeScratch()
    var generator = SplitMix64(seed: 3)
    var written = Set<UInt64>()
    for _ in 0..<500 {
        let page = generator.next() % (16 << 8)
        written.insert(page)
        try disk.writeBytes(
            [UInt8](repeating: 7, count: 4096), at: page * 4096, scratch: chunkScratch)
    }
    try disk.flush()
    #expect(try disk.store.allocatedDataByteCount() == UInt64(written.count) * 4096)
    #expect(disk.store.writtenChunkCount == UInt64(written.count))
}

@Test func racingPartialWritesIntoOneUntouchedChunkBothLand() throws {
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("base"), byteCount: 8 << 20, seed: 13)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"), chunkByteCount: 65536)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let rounds = 100
    DispatchQueue.concurrentPerform(iterations: 2 * rounds) { iteration in
        let chunk = UInt64(iteration / 2)
        let half = UInt64(iteration % 2)
        let bytes = [UInt8](repeating: UInt8(1 + half), count: 1000)
        try? disk.writeBytes(
            bytes, at: chunk * 65536 + half * 30000 + 100, scratch: disk.makeScratch())
    }
    for chunk in 0..<UInt64(rounds) {
        let actual = try disk.readBytes(at: chunk * 65536, count: 65536)
        var expected = Array(base[Int(chunk * 65536)..<Int((chunk + 1) * 65536)])
        for index in 100..<1100 { expected[index] = 1 }
        for index in 30100..<31100 { expected[index] = 2 }
        #expect(actual == expected, "chunk \(chunk): one write erased the other")
    }
}

@Test func extentsTellStoreBaseHolesAndTheGrownTail() throws {
    let scratch = try Scratch(onDisk: true)
    _ = try makeBase(at: scratch.path("base"), byteCount: 4 << 20, seed: 14)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"), virtualByteCount: 5 << 20)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let chunkScratch = disk.makeScratch()
    try disk.writeBytes([UInt8](repeating: 9, count: 16384), at: 0, scratch: chunkScratch)
    try disk.trim(at: 8192, byteCount: 8192)
    let extents = try disk.extents(at: 0, byteCount: 5 << 20, maxExtentCount: 100)
    #expect(
        extents.first == SourceExtent(byteCount: 8192, allocation: .data, depth: 1))
    #expect(extents[1] == SourceExtent(byteCount: 8192, allocation: .hole, depth: 1))
    #expect(extents[2].depth == 2 && !extents[2].isHole)
    // The base's sparse hole at 2 MiB (makeBase leaves 192 KiB unallocated there).
    #expect(
        extents.contains {
            $0.isHole && $0.depth == 0 && $0.byteCount >= 3 * 65536
        })
    #expect(
        extents.last == SourceExtent(byteCount: 1 << 20, allocation: .hole, depth: 0))
    #expect(extents.reduce(0) { $0 + $1.byteCount } == 5 << 20)
}

@Test func fastZeroThatNeedsACopyUpFailsWithoutChangingAnything() throws {
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 15)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect(throws: StoreError.self) {
        try disk.writeZeroes(at: 100, byteCount: 10000, fast: true, scratch: disk.makeScratch())
    }
    #expect(try disk.readBytes(at: 0, count: 20000) == Array(base[0..<20000]))
    try disk.writeZeroes(at: 4096, byteCount: 8192, fast: true, scratch: disk.makeScratch())
    #expect(try disk.readBytes(at: 4096, count: 8192) == [UInt8](repeating: 0, count: 8192))
}

@Test func aChangedBaseIsRefused() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 4 << 20, seed: 16)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.path("base")))
    try handle.seek(toOffset: 0)
    try handle.write(contentsOf: Data([1, 2, 3]))
    try handle.close()
    #expect {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    } throws: { error in
        "\(error)".contains("has changed since the store was created")
    }
}

@Test func aSecondWriterIsRefusedWhileTheFirstHoldsTheStore() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 17)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let first = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect(throws: StoreError.self) {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    first.close()  // keeps `first` (and its lock) alive until here
}

@Test func createRefusesAnExistingFileAndLeavesItAlone() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 18)
    _ = FileManager.default.createFile(atPath: scratch.path("cow"), contents: Data("precious".utf8))
    #expect(throws: StoreError.self) {
        try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    }
    #expect(try fileBytes(scratch.path("cow")) == Array("precious".utf8))
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.url.path)
    #expect(leftovers.sorted() == ["base", "cow"])
}

@Test func aFlushOfMoreBitmapPagesThanOneBatchPersistsThemAll() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 51)
    // One 4 KiB write in each of 2100 bitmap pages (a page covers 128 MiB of disk).
    let pageSpan: UInt64 = 128 << 20
    let pageCount = StoreFile.flushBatchPageCount + 52
    try createStore(
        at: scratch.path("cow"), base: scratch.path("base"),
        virtualByteCount: UInt64(pageCount) * pageSpan)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let chunkScratch = disk.makeScratch()
    for page in 0..<UInt64(pageCount) {
        try disk.writeBytes(
            [UInt8](repeating: UInt8(truncatingIfNeeded: page | 1), count: 4096),
            at: page * pageSpan + 8192, scratch: chunkScratch)
    }
    try disk.flush()
    disk.close()
    let reopened = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")), readOnly: true)
    }
    defer { reopened.close() }
    #expect(reopened.store.writtenChunkCount == UInt64(pageCount))
    for page in [0, 2047, 2048, UInt64(pageCount) - 1] as [UInt64] {
        #expect(
            try reopened.readBytes(at: page * pageSpan + 8192, count: 4096)
                == [UInt8](repeating: UInt8(truncatingIfNeeded: page | 1), count: 4096))
    }
}
