// Files written whole under a temporary (merge --output, export-diff, compress, create): a
// temporary left by a killed run never blocks the next run, and a failed fsync of the folder
// is reported, not ignored.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Test func aTemporaryLeftByAKilledRunDoesNotBlockTheNextRunAndIsRemoved() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 81)
    // What a run killed with -9 left: one with this process's pid, one with a dead process's.
    let samePid = scratch.path(".flat.tmp.\(getpid())")
    let deadPid = scratch.path(".flat.tmp.2147483646")
    for stale in [samePid, deadPid] {
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: stale))
    }
    _ = try StoreMerge(
        storePath: FilePath(scratch.path("cow")),
        destination: .output(FilePath(scratch.path("flat")), overwrite: false)
    ).run()
    #expect(try fileBytes(scratch.path("flat")) == expected)
    #expect(!FileManager.default.fileExists(atPath: samePid))
    #expect(!FileManager.default.fileExists(atPath: deadPid))
}

@Test func aFailedFolderSyncIsReported() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 82)
    #expect(throws: StoreError.self) {
        try InjectedFault.$folderSync.withValue(.ioError) {
            _ = try StoreMerge(
                storePath: FilePath(scratch.path("cow")),
                destination: .output(FilePath(scratch.path("flat")), overwrite: false)
            ).run()
        }
    }
}
