import CowFormat
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
