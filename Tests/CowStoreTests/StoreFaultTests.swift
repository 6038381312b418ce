// A store over a failing disk, through the fault-injecting StoreIO: a failed fsync fails the
// store for good (Linux reports a writeback error once, so a retried fsync proves nothing), and
// a merge stops at any lseek error rather than take it for a hole.

import CowFormat
import CowStore
import Foundation
import Synchronization
import SystemPackage
import Testing

@Test func afterAFailedFsyncEveryFlushAndChangeFailsAndAReopenHasTheLastFlushedState() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 21)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let (disk, io) = try openDiskWithTestIO(at: scratch.path("cow"))
    let chunkScratch = disk.makeScratch()
    let flushed = [UInt8](repeating: 0x11, count: 10_000)
    try disk.writeBytes(flushed, at: 3000, scratch: chunkScratch)
    try disk.flush()
    let expected = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    try disk.writeBytes([UInt8](repeating: 0x22, count: 4096), at: 65536, scratch: chunkScratch)
    // The writeback error is reported by one fsync only, as Linux does.
    let reported = Mutex(false)
    io.inject { operation, _ in
        guard operation == .synchronizeAll || operation == .synchronizeData else { return nil }
        return reported.withLock { done in
            defer { done = true }
            return done ? nil : .ioError
        }
    }
    #expect(!disk.store.isFailed)
    #expect(throws: StoreError.self) { try disk.flush() }
    #expect(disk.store.isFailed)
    #expect(throws: StoreError.self, "a later flush must not succeed") { try disk.flush() }
    #expect(throws: StoreError.self) {
        try disk.writeBytes([1], at: 200_000, scratch: chunkScratch)
    }
    #expect(throws: StoreError.self) {
        try disk.writeZeroes(at: 300_000, byteCount: 4096, scratch: chunkScratch)
    }
    #expect(throws: StoreError.self) { try disk.trim(at: 3000, byteCount: 4096) }
    #expect(try disk.readBytes(at: 3000, count: flushed.count) == flushed, "reads go on")
    disk.close()

    let report = try StoreCheck.run(storePath: FilePath(scratch.path("cow")), repair: false)
    #expect(report.isConsistent, "\(report.findings)")
    let reopened = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { reopened.close() }
    #expect(try reopened.readBytes(at: 0, count: Int(reopened.byteCount)) == expected)
}

@Test func aMergeStopsAtAnLseekErrorAndARerunFinishesIt() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 22)
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("target"))
    let storePath = FilePath(scratch.path("cow"))
    let heldBefore = try retryingWhileInUse {
        try StoreFile(path: storePath, access: .sharedRead)
    }
    let chunkCount = heldBefore.writtenChunkCount
    heldBefore.close()
    #expect(chunkCount > 0)

    // In a function of its own, so the merge (and its lock) is gone when it returns.
    func mergeFailingAtSeekData() throws {
        var made: TestStoreIO?
        let merge = try StoreMerge(
            storePath: storePath, destination: .into(FilePath(scratch.path("target")))
        ) { inner in
            let io = TestStoreIO(wrapping: inner)
            made = io
            return io
        }
        guard let io = made else { return }
        // Fail SEEK_DATA once the merge is copying: after as many calls as `plan` makes (run
        // makes them too, to count the bytes for its progress).
        let before = io.calls.count { $0 == .nextData }
        _ = try merge.plan()
        let perPass = io.calls.count { $0 == .nextData } - before
        let seen = Mutex(before + perPass)
        io.inject { operation, _ in
            guard operation == .nextData else { return nil }
            return seen.withLock { count in
                count += 1
                return count > before + 2 * perPass ? .ioError : nil
            }
        }
        #expect(throws: StoreError.self) { _ = try merge.run() }
    }
    try mergeFailingAtSeekData()

    let store = try retryingWhileInUse { try StoreFile(path: storePath, access: .sharedRead) }
    #expect(store.writtenChunkCount == chunkCount, "the store keeps every chunk")
    store.close()
    _ = try StoreMerge(storePath: storePath, destination: .into(FilePath(scratch.path("target"))))
        .run()
    #expect(try fileBytes(scratch.path("target")) == expected)
}

@Test func aTrimOfChunksTheStoreDoesNotHoldChangesNothing() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 23)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    let before = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    try disk.trim(at: 0, byteCount: disk.byteCount)
    #expect(disk.store.writtenChunkCount == 0)
    #expect(try disk.readBytes(at: 0, count: Int(disk.byteCount)) == before)
    try disk.flush()
    disk.close()
    let export = try StoreDiffExport(storePath: FilePath(scratch.path("cow")))
    defer { export.close() }
    var extents: [ChangedExtent] = []
    try export.forEachChangedExtent { extents.append($0) }
    #expect(extents.isEmpty)
}
