import CowFormat
import TestSupport
import Testing

@Test func bitmapRunsAgreeWithASetOfChunks() {
    var generator = SplitMix64(seed: 42)
    let chunkCount: UInt64 = 200_000
    let bitmap = ChunkBitmap(chunkCount: chunkCount)
    var model = Set<UInt64>()
    for _ in 0..<3000 {
        let start = generator.next() % chunkCount
        let length = min(chunkCount - start, generator.next() % 200 + 1)
        for chunk in start..<(start + length) {
            bitmap.set(chunk)
            model.insert(chunk)
        }
    }
    #expect(bitmap.setCount == UInt64(model.count))
    var chunk: UInt64 = 0
    while chunk < chunkCount {
        let run = bitmap.run(from: chunk, limit: chunkCount)
        #expect(run.chunkCount > 0)
        for inside in chunk..<(chunk + run.chunkCount) where model.contains(inside) != run.isSet {
            Issue.record("chunk \(inside) disagrees with run from \(chunk)")
            return
        }
        let next = chunk + run.chunkCount
        if next < chunkCount { #expect(model.contains(next) != run.isSet) }
        chunk = next
    }
}

@Test func bitmapPagesRoundTripAndOnlyWrittenPagesTakeMemory() throws {
    let bitmap = ChunkBitmap(chunkCount: 1 << 28)  // a 1 TiB disk in 4 KiB chunks
    #expect(bitmap.allocatedPageCount == 0)
    bitmap.set(5)
    bitmap.set(1 << 27)
    #expect(bitmap.allocatedPageCount == 2)
    #expect(bitmap.takeDirtyPages() == [0, 4096])
    #expect(bitmap.dirtyPageCount == 0)
    var page = [UInt8](repeating: 0, count: 4096)
    page.withUnsafeMutableBytes { bitmap.copyPage(0, into: $0) }
    #expect(page[0] == 0b0010_0000)
    let copy = ChunkBitmap(chunkCount: 1 << 28)
    try page.withUnsafeBytes { try copy.loadPage(0, from: $0) }
    #expect(copy.isSet(5) && !copy.isSet(4) && copy.setCount == 1)
}

@Test func bitsPastTheLastChunkAreRejectedOnLoad() {
    let bitmap = ChunkBitmap(chunkCount: 100)
    var page = [UInt8](repeating: 0, count: 4096)
    page[12] = 0b0001_0000  // chunk 100
    #expect(throws: FormatError.self) {
        try page.withUnsafeBytes { try bitmap.loadPage(0, from: $0) }
    }
    page[12] = 0b0000_1000  // chunk 99, the last
    #expect((try? page.withUnsafeBytes { try bitmap.loadPage(0, from: $0) }) != nil)
}

@Test func rangeSetAndClearAgreeWithASetOfChunks() {
    var generator = SplitMix64(seed: 43)
    let chunkCount: UInt64 = 3 * ChunkBitmap.chunksPerPage + 777
    let bitmap = ChunkBitmap(chunkCount: chunkCount)
    var model = Set<UInt64>()
    for step in 0..<2000 {
        let start = generator.next() % chunkCount
        let length = min(chunkCount - start, generator.next() % (step % 10 == 0 ? 70_000 : 300))
        let chunks = start..<(start + length)
        if generator.next() % 3 != 0 {
            let expected = chunks.count { !model.contains($0) }
            #expect(bitmap.set(chunks) == UInt64(expected), "step \(step)")
            model.formUnion(chunks)
        } else {
            let expected = chunks.count { model.contains($0) }
            #expect(bitmap.clear(chunks) == UInt64(expected), "step \(step)")
            model.subtract(chunks)
        }
        #expect(bitmap.setCount == UInt64(model.count), "step \(step)")
    }
    for chunk in 0..<chunkCount where bitmap.isSet(chunk) != model.contains(chunk) {
        Issue.record("chunk \(chunk) differs")
        return
    }
}

@Test func aRangeSetDirtiesExactlyThePagesItChanges() {
    let bitmap = ChunkBitmap(chunkCount: 4 * ChunkBitmap.chunksPerPage)
    _ = bitmap.takeDirtyPages()
    let perPage = ChunkBitmap.chunksPerPage
    #expect(bitmap.set((perPage - 1)..<(perPage + 1)) == 2)
    #expect(bitmap.takeDirtyPages() == [0, 1])
    #expect(bitmap.set(perPage..<(perPage + 1)) == 0)
    #expect(bitmap.takeDirtyPages() == [])
    #expect(bitmap.clear(0..<(4 * perPage)) == 2)
    #expect(bitmap.takeDirtyPages() == [0, 1])
    #expect(bitmap.setCount == 0)
    #expect(bitmap.clear(0..<perPage) == 0)
    #expect(bitmap.allocatedPageCount == 2)
}

@Test func dirtyPagesAgreeWithASetOfPagesAcrossSetsLoadsAndRetries() throws {
    var generator = SplitMix64(seed: 44)
    let pageCount: UInt64 = 200  // more than one word of dirty bits
    let bitmap = ChunkBitmap(chunkCount: pageCount * ChunkBitmap.chunksPerPage - 5)
    var model = Set<Int>()
    let zeroPage = [UInt8](repeating: 0, count: ChunkBitmap.pageByteCount)
    for step in 0..<3000 {
        let pageIndex = Int(generator.next() % pageCount)
        switch generator.next() % 4 {
        case 0, 1:
            let chunkIndex = UInt64(pageIndex) * ChunkBitmap.chunksPerPage + generator.next() % 64
            if bitmap.set(chunkIndex) { model.insert(pageIndex) }
        case 2:
            try zeroPage.withUnsafeBytes { try bitmap.loadPage(pageIndex, from: $0) }
            model.remove(pageIndex)
        default:
            let taken = bitmap.takeDirtyPages()
            #expect(taken == model.sorted(), "step \(step)")
            // A failed write of some of them: they are dirty again, once each.
            let retried = taken.filter { _ in generator.next() % 2 == 0 }
            bitmap.markDirty(retried + retried)
            model = Set(retried)
        }
        #expect(bitmap.dirtyPageCount == model.count, "step \(step)")
    }
    #expect(bitmap.takeDirtyPages() == model.sorted())
    #expect(bitmap.dirtyPageCount == 0)
}
