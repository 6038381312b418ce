// Locks between the stores that read a base and the commands that write an image in place: an
// import-diff or an in-place merge into a file that some open store reads as its base is
// refused with an error naming that use, and changes nothing; a base being written is refused
// as a base.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// Whether `error` is the one-line refusal of a file in use as a base, naming `path`.
private func isInUseAsBase(_ error: any Error, path: String) -> Bool {
    guard let error = error as? FileInUseError, error.holder == .readers else { return false }
    return "\(error)".hasPrefix("\(path): in use as a base")
}

@Test func anImportIntoABaseThatAnOpenStoreReadsIsRefusedAndChangesNothing() throws {
    let scratch = try Scratch()
    let baseBytes = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 11)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try Data().write(to: URL(fileURLWithPath: scratch.path("diff")))
    let reader = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")), readOnly: true)
    #expect {
        _ = try DiffImport(
            diffPath: scratch.path("diff"), targetPath: FilePath(scratch.path("base")),
            force: true)
    } throws: { isInUseAsBase($0, path: scratch.path("base")) }
    withExtendedLifetime(reader) {}  // held open until here
    reader.close()
    #expect(try fileBytes(scratch.path("base")) == baseBytes)
}

@Test func aBaseBeingImportedIntoIsRefusedAsABase() throws {
    let scratch = try Scratch()
    _ = try makeBase(at: scratch.path("base"), byteCount: 1 << 20, seed: 12)
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    try Data().write(to: URL(fileURLWithPath: scratch.path("diff")))
    let job = try DiffImport(
        diffPath: scratch.path("diff"), targetPath: FilePath(scratch.path("base")), force: true)
    #expect {
        _ = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")), readOnly: true)
    } throws: { error in
        (error as? FileInUseError)?.holder == .writer
            && "\(error)".hasPrefix("\(scratch.path("base")): in use by another cowbd")
    }
    withExtendedLifetime(job) {}  // held open until here
}

@Test func aMergeInPlaceIsRefusedWhileAnotherStoreReadsTheSameBase() throws {
    let scratch = try Scratch()
    let expected = try storeWithRandomChanges(scratch, seed: 13)
    let baseBytes = try fileBytes(scratch.path("base"))
    try createStore(at: scratch.path("other"), base: scratch.path("base"))
    let storeBefore = try fileBytes(scratch.path("cow"))
    do {  // the reader, and the shared lock of its base, end with this block
        let reader = try VirtualDisk.open(
            storePath: FilePath(scratch.path("other")), readOnly: true)
        #expect {
            _ = try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: .inPlace)
                .run()
        } throws: { isInUseAsBase($0, path: scratch.path("base")) }
        withExtendedLifetime(reader) {}  // held open until here
        reader.close()
    }
    #expect(try fileBytes(scratch.path("base")) == baseBytes)
    #expect(try fileBytes(scratch.path("cow")) == storeBefore)
    // Once no store reads it, the same merge goes through.
    _ = try StoreMerge(storePath: FilePath(scratch.path("cow")), destination: .inPlace).run()
    #expect(try fileBytes(scratch.path("base")) == expected)
}
