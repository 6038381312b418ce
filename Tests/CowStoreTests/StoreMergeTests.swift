// Merges checked byte for byte against the disk they fold: --output, --into and --in-place,
// after seeded random writes, zeroes and trims; and the refusals.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

private func reopenedDiskBytes(_ scratch: Scratch) throws -> [UInt8] {
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { disk.close() }
    #expect(disk.store.writtenChunkCount == 0, "a finished merge leaves the store empty")
    return try disk.readBytes(at: 0, count: Int(disk.byteCount))
}

@Test(arguments: [1, 2] as [UInt64])
func mergeIntoACopyOfTheBaseGivesTheDiskAndRebindsTheStore(seed: UInt64) throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: seed, grow: seed == 2)
    let base = try fileBytes(scratch.path("base"))
    try FileManager.default.copyItem(atPath: scratch.path("base"), toPath: scratch.path("target"))
    let summary = try StoreMerge(
        storePath: FilePath(scratch.path("cow")),
        destination: .into(FilePath(scratch.path("target")))
    ).run()
    #expect(!summary.resumed)
    #expect(try fileBytes(scratch.path("target")) == expected)
    #expect(try fileBytes(scratch.path("base")) == base, "--into never writes the base")
    #expect(try reopenedDiskBytes(scratch) == expected)
}

@Test func mergeInPlaceWritesTheBaseAndServesTheSameDisk() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 3)
    _ = try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: .inPlace).run()
    #expect(try fileBytes(scratch.path("base")) == expected)
    #expect(try reopenedDiskBytes(scratch) == expected)
}

@Test func mergeToOutputFlattensAndTouchesNothingElse() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 4, grow: true)
    let storeBefore = try fileBytes(scratch.path("cow"))
    let merge = try StoreMerge(
        storePath: FilePath(scratch.path("cow")),
        destination: .output(FilePath(scratch.path("flat")), overwrite: false))
    let plan = try merge.plan()
    let summary = try merge.run()
    #expect(plan.dataByteCount >= summary.dataByteCount)
    #expect(try fileBytes(scratch.path("flat")) == expected)
    #expect(try fileBytes(scratch.path("cow")) == storeBefore)
    #expect(throws: StoreError.self) {
        try StoreMerge(
            storePath: FilePath(scratch.path("cow")),
            destination: .output(FilePath(scratch.path("flat")), overwrite: false)
        ).run()
    }
}

@Test func mergeIsRefusedWhileTheStoreIsOpenForServing() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 5)
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    #expect(throws: StoreError.self) {
        try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: .inPlace)
    }
    disk.close()
}

@Test func mergeIntoAnImageThatIsNotTheBaseWritesNothing() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 6)
    _ = try makeBase(at: scratch.path("other"), byteCount: 3 << 20 + 321, seed: 99)
    let before = try fileBytes(scratch.path("other"))
    let storeBefore = try fileBytes(scratch.path("cow"))
    #expect(throws: StoreError.self) {
        try StoreMerge(
            storePath: FilePath(scratch.path("cow")),
            destination: .into(FilePath(scratch.path("other")))
        )
        .run()
    }
    #expect(try fileBytes(scratch.path("other")) == before)
    #expect(try fileBytes(scratch.path("cow")) == storeBefore)
}

@Test func mergeOverAChangedBaseIsRefused() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 7)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.path("base")))
    try handle.write(contentsOf: Data([9, 9, 9]))
    try handle.close()
    #expect(throws: StoreError.self) {
        try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: .inPlace)
    }
}
