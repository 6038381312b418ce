// rbd diffs that chain as Ceph's do: `export-diff --to NAME` records checkpoint NAME at the
// instant of the export and names it in a `t` record (after `f OLD` with `--since OLD`). The
// streams are read back by a reader written here from interop-formats.md, not by cowbd's import.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// One record of an rbd diff v1 stream.
private enum RBDRecord: Equatable {
    case from(String)
    case to(String)
    case size(UInt64)
    case write(offset: UInt64, bytes: [UInt8])
    case zero(offset: UInt64, byteCount: UInt64)
}

/// Reads an rbd diff v1 stream (banner, records, `e` as its last byte); nil if malformed.
private func rbdRecords(_ stream: [UInt8]) -> [RBDRecord]? {
    guard stream.starts(with: Array("rbd diff v1\n".utf8)) else { return nil }
    var cursor = 12
    func take(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, stream.count - cursor >= count else { return nil }
        defer { cursor += count }
        return stream[cursor..<cursor + count]
    }
    func integer(_ byteCount: Int) -> UInt64? {
        take(byteCount)?.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
    func name() -> String? {
        guard let count = integer(4), let bytes = take(Int(count)) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
    var records: [RBDRecord] = []
    while let tag = take(1)?.first {
        switch UnicodeScalar(tag) {
        case "e": return cursor == stream.count ? records : nil
        case "f": guard let name = name() else { return nil }; records.append(.from(name))
        case "t": guard let name = name() else { return nil }; records.append(.to(name))
        case "s": guard let size = integer(8) else { return nil }; records.append(.size(size))
        case "w":
            guard let offset = integer(8), let count = integer(8),
                let bytes = take(Int(exactly: count) ?? -1)
            else { return nil }
            records.append(.write(offset: offset, bytes: Array(bytes)))
        case "z":
            guard let offset = integer(8), let count = integer(8) else { return nil }
            records.append(.zero(offset: offset, byteCount: count))
        default: return nil
        }
    }
    return nil
}

/// The metadata records (f, t, s) that open the stream, in order.
private func preamble(_ records: [RBDRecord]) -> [RBDRecord] {
    Array(
        records.prefix {
            switch $0 {
            case .from, .to, .size: true
            default: false
            }
        })
}

/// Applies the data records to `image` as `rbd import-diff` would (the size record resizes).
private func apply(_ records: [RBDRecord], to image: inout [UInt8]) {
    for record in records {
        switch record {
        case .size(let size):
            image = Array(image.prefix(Int(size)))
            image += [UInt8](repeating: 0, count: Int(size) - image.count)
        case .write(let offset, let bytes):
            image.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes)
        case .zero(let offset, let byteCount):
            image.replaceSubrange(
                Int(offset)..<Int(offset + byteCount),
                with: repeatElement(0, count: Int(byteCount)))
        case .from, .to: break
        }
    }
}

/// Exports the store "cow" as an rbd diff to the file `name`; returns the stream's bytes.
private func exportRBD(_ scratch: Scratch, since: String? = nil, to: String?, name: String)
    throws -> [UInt8]
{
    let job = try retryingWhileInUse {
        try StoreDiffExport(
            storePath: FilePath(scratch.path("cow")), sinceCheckpoint: since,
            recordingCheckpoint: to)
    }
    defer { job.close() }
    let descriptor = try FileDescriptor.open(
        FilePath(scratch.path(name)), .writeOnly, options: [.create, .truncate],
        permissions: .ownerReadWrite)
    defer { try? descriptor.close() }
    _ = try job.write(format: .rbd, to: descriptor, name: name)
    return try fileBytes(scratch.path(name))
}

private func checkpointNames(_ scratch: Scratch) throws -> [String] {
    let file = try StoreFile(path: FilePath(scratch.path("cow")), access: .unlockedRead)
    defer { file.close() }
    return (file.checkpointTable?.checkpoints ?? []).map(\.checkpoint.name)
}

@Test(arguments: [31, 32] as [UInt64])
func rbdDiffsWithToChainAFullDiffAndAnIncrementalOneAsCephDoes(seed: UInt64) throws {
    let scratch = try Scratch()
    let stateA = try storeWithRandomChanges(scratch, seed: seed)
    let full = try #require(rbdRecords(try exportRBD(scratch, to: "s1", name: "full.rbd")))
    #expect(preamble(full) == [.to("s1"), .size(UInt64(stateA.count))], "seed \(seed)")
    #expect(try checkpointNames(scratch) == ["s1"])
    var image = try fileBytes(scratch.path("base"))
    apply(full, to: &image)
    #expect(image == stateA, "seed \(seed): the full diff onto the base")

    let disk = try retryingWhileInUse {
        try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    }
    var generator = SplitMix64(seed: seed &+ 1000)
    try applyRandomChanges(to: disk, count: 30, &generator)
    try disk.flush()
    let stateB = try disk.readBytes(at: 0, count: Int(disk.byteCount))
    disk.close()

    let incremental = try #require(
        rbdRecords(try exportRBD(scratch, since: "s1", to: "s2", name: "inc.rbd")))
    #expect(
        preamble(incremental) == [.from("s1"), .to("s2"), .size(UInt64(stateB.count))],
        "seed \(seed)")
    #expect(try checkpointNames(scratch).sorted() == ["s1", "s2"])
    apply(incremental, to: &image)
    #expect(image == stateB, "seed \(seed): the incremental diff on top")

    // Nothing changed since s2: the next link of the chain holds no extent.
    let empty = try #require(
        rbdRecords(try exportRBD(scratch, since: "s2", to: "s3", name: "empty.rbd")))
    #expect(empty == [.from("s2"), .to("s3"), .size(UInt64(stateB.count))])
}

@Test func rbdDiffWithoutToNamesNoEndSnapshotAndRecordsNoCheckpoint() throws {
    let scratch = try Scratch()
    let state = try storeWithRandomChanges(scratch, seed: 33)
    let records = try #require(rbdRecords(try exportRBD(scratch, to: nil, name: "plain.rbd")))
    #expect(preamble(records) == [.size(UInt64(state.count))])
    #expect(try checkpointNames(scratch) == [])
}

@Test func recordingACheckpointNameInUseIsRefusedBeforeAnythingIsWritten() throws {
    let scratch = try Scratch()
    _ = try storeWithRandomChanges(scratch, seed: 34)
    _ = try exportRBD(scratch, to: "s1", name: "first.rbd")
    let before = try fileBytes(scratch.path("cow"))
    #expect(throws: StoreError.self) {
        _ = try exportRBD(scratch, to: "s1", name: "second.rbd")
    }
    #expect(!FileManager.default.fileExists(atPath: scratch.path("second.rbd")))
    #expect(throws: StoreError.self) {
        _ = try exportRBD(scratch, to: "bad/name", name: "third.rbd")
    }
    #expect(try checkpointNames(scratch) == ["s1"])
    #expect(try fileBytes(scratch.path("cow")).count == before.count)
}

@Test func rbdDiffsWithFromAndToRecordsAsCephWritesThemImportOntoARawImage() throws {
    // `rbd export-diff --from-snap a img@b`: f, t and s before the extents.
    let scratch = try Scratch()
    let base = try makeBase(at: scratch.path("raw"), byteCount: 1 << 20, seed: 35)
    var stream = Array("rbd diff v1\n".utf8)
    func append(_ value: UInt64, _ byteCount: Int) {
        for index in 0..<byteCount {
            stream.append(UInt8(truncatingIfNeeded: value >> (8 * index)))
        }
    }
    for (tag, name) in [("f", "a"), ("t", "snap-b")] {
        stream += Array(tag.utf8)
        append(UInt64(name.utf8.count), 4)
        stream += Array(name.utf8)
    }
    stream += Array("s".utf8)
    append(1 << 20, 8)
    stream += Array("w".utf8)
    append(8192, 8)
    append(5, 8)
    stream += [1, 2, 3, 4, 5]
    stream += Array("z".utf8)
    append(65536, 8)
    append(4096, 8)
    stream += Array("e".utf8)
    try Data(stream).write(to: URL(fileURLWithPath: scratch.path("ceph.rbd")))
    var expected = base
    apply(try #require(rbdRecords(stream)), to: &expected)
    _ = try DiffImport(
        diffPath: scratch.path("ceph.rbd"), targetPath: FilePath(scratch.path("raw")), force: true
    ).run()
    #expect(try fileBytes(scratch.path("raw")) == expected)
}
