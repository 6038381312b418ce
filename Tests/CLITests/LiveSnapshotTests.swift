// Live snapshots of a served store (docs/CONTROL.md, "Live snapshot"): under a libnbd write
// load the acknowledged writes split exactly between the frozen layer and the new top, with
// no request failing and the connections kept; checkpoints keep counting across it; the frozen
// layer exports while its upper is served; a server killed at random instants of a snapshot
// leaves a store that `check` accepts and that serves every flushed write; bad LAYERs are
// refused with the server unaffected.

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The 99th percentile of `values` (0 for none).
private func p99(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
}

/// `model` with the write of `record` (by writer `pairIndex % writerCount`) in place.
private func apply(_ record: WriteRecord, writerCount: Int, to model: inout [UInt8]) {
    model.replaceSubrange(
        (record.pairIndex * 8192)..<((record.pairIndex + 1) * 8192),
        with: writeContent(writer: record.pairIndex % writerCount, sequence: record.sequence))
}

/// The chunks a store holds, from `export-diff --format json` (offline, or live).
private func heldChunks(_ workspace: Workspace, _ store: String) throws -> Set<Int> {
    let text = try workspace.succeed("export-diff", store, "-", "--format", "json")
    guard
        let extents = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]
    else { throw TestFailure("export-diff json: \(text)") }
    var chunks = Set<Int>()
    for extent in extents {
        guard let offset = extent["offset"] as? Int, let length = extent["length"] as? Int else {
            throw TestFailure("extent \(extent)")
        }
        for chunk in (offset / LiveFixture.chunkByteCount)..<((offset + length) / 4096) {
            chunks.insert(chunk)
        }
    }
    return chunks
}

@Suite("Live snapshots of a served store") struct LiveSnapshotTests {
    @Test func liveSnapshotUnderWriteLoadSplitsTheAcknowledgedWritesExactly() throws {
        // Room for ~16000 writes: the load writes each pair once, and must not run out.
        let diskByteCount = 128 << 20
        let fixture = try LiveFixture(diskByteCount: diskByteCount)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        let load = WriteLoad(writerCount: 3, pairCount: diskByteCount / 8192)
        let socketPath = fixture.server.socketPath
        load.start {
            let connection = try NBDConnection()
            try connection.connect(unixSocketPath: socketPath)
            return connection
        }
        // A checkpoint before the snapshot: its changes must go on counting across it.
        #expect(waitUntil(seconds: 60) { load.leastCount >= 50 })
        let checkpointStart = nowSeconds()
        try workspace.succeed("checkpoint", "disk.cow", "cp")
        let checkpointEnd = nowSeconds()
        #expect(waitUntil(seconds: 60) { load.leastIssued(after: checkpointEnd) >= 50 })
        let commandStart = nowSeconds()
        try workspace.succeed("snapshot", "disk.cow", "layer.cow")
        let commandEnd = nowSeconds()
        // The frozen layer exports while its upper is served and written.
        let layerChunks = try heldChunks(workspace, "layer.cow")
        try workspace.succeed("export-diff", "layer.cow", "layer.diff")
        #expect(waitUntil(seconds: 60) { load.leastIssued(after: commandEnd) >= 100 })
        let (records, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let dirty = try fixture.dirtyChunks(since: "cp")
        #expect(try fixture.dirtyChunksByNbdinfo(since: "cp") == dirty)
        let topChunkCount = try workspace.json("info", "disk.cow", "--json")["chunks_written"]

        // Each writer's writes split once at the snapshot and once at the checkpoint.
        var inLayer: [WriteRecord] = []
        var atCheckpoint: [WriteRecord] = []
        var latenciesDuring: [Double] = []
        var writtenChunks = Set<Int>()
        for (writer, list) in records.enumerated() {
            var sawTop = false
            var sawDirty = false
            for record in list {
                let first = 2 * record.pairIndex
                writtenChunks.formUnion([first, first + 1])
                let layered = layerChunks.contains(first)
                #expect(layered == layerChunks.contains(first + 1), "torn: \(record)")
                #expect(dirty.contains(first) == dirty.contains(first + 1), "torn: \(record)")
                #expect(!(sawTop && layered), "writer \(writer) reordered at the snapshot")
                #expect(!(sawDirty && !dirty.contains(first)), "reordered at the checkpoint")
                sawTop = sawTop || !layered
                sawDirty = sawDirty || dirty.contains(first)
                if record.acknowledgedSeconds < commandStart {
                    #expect(layered, "acknowledged before the snapshot, not in it: \(record)")
                }
                if record.issuedSeconds > commandEnd {
                    #expect(!layered, "issued after the snapshot, in it: \(record)")
                }
                if record.acknowledgedSeconds < checkpointStart {
                    #expect(!dirty.contains(first), "before the checkpoint, dirty: \(record)")
                }
                if record.issuedSeconds > checkpointEnd {
                    #expect(dirty.contains(first), "after the checkpoint, clean: \(record)")
                }
                if layered { inLayer.append(record) }
                if !dirty.contains(first) { atCheckpoint.append(record) }
                if record.acknowledgedSeconds >= commandStart && record.issuedSeconds <= commandEnd
                {
                    latenciesDuring.append(record.acknowledgedSeconds - record.issuedSeconds)
                }
            }
        }
        #expect(layerChunks.isSubset(of: writtenChunks))
        #expect(dirty.isSubset(of: writtenChunks))
        let allCount = records.reduce(0) { $0 + $1.count }
        #expect(topChunkCount as? Int == 2 * (allCount - inLayer.count))

        // Byte for byte: the layer's diff over the base is the model of the writes in it;
        // the served disk is every acknowledged write; the disk at the checkpoint plus the
        // diff since it (across the snapshot) is the disk now.
        var layerModel = [UInt8](repeating: 0, count: diskByteCount)
        for record in inLayer { apply(record, writerCount: 3, to: &layerModel) }
        var checkpointModel = [UInt8](repeating: 0, count: diskByteCount)
        for record in atCheckpoint { apply(record, writerCount: 3, to: &checkpointModel) }
        var final = [UInt8](repeating: 0, count: diskByteCount)
        for list in records { for record in list { apply(record, writerCount: 3, to: &final) } }
        #expect(try fixture.readDisk() == final, "the disk is not every acknowledged write")
        try Data(count: diskByteCount).write(to: URL(fileURLWithPath: workspace.path("layer.img")))
        try workspace.succeed("import-diff", "layer.diff", "layer.img")
        #expect(workspace.contents("layer.img") == Data(layerModel), "layer != writes before it")
        try fixture.server.stop()
        let check = try workspace.cowbd("check", "disk.cow")
        #expect(check.status == 0, "\(check.standardOutput)\(check.standardError)")
        try Data(checkpointModel).write(to: URL(fileURLWithPath: workspace.path("cp.img")))
        try workspace.succeed("export-diff", "disk.cow", "since.diff", "--since", "cp")
        try workspace.succeed("import-diff", "since.diff", "cp.img")
        #expect(workspace.contents("cp.img") == Data(final), "checkpoint + diff != disk")
        print(
            "live snapshot: command \(Int((commandEnd - commandStart) * 1000)) ms under 3 writers; writes during it: \(latenciesDuring.count), p99 \(String(format: "%.2f", p99(latenciesDuring) * 1000)) ms; layer/top writes: \(inLayer.count)/\(allCount - inLayer.count)"
        )
    }

    @Test func liveSnapshotRefusesAnExistingLayerAndOneOnAnotherFilesystem() throws {
        let fixture = try LiveFixture(diskByteCount: 1 << 20)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        let connection = try fixture.server.connect()
        try connection.pwrite([UInt8](repeating: 7, count: 4096), at: 0)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: workspace.path("taken.cow")))
        let taken = try workspace.cowbd("snapshot", "disk.cow", "taken.cow")
        #expect(taken.status == 1)
        #expect(taken.standardError.contains("taken.cow"), "\(taken.standardError)")
        #expect(workspace.contents("taken.cow") == Data("mine".utf8))
        // The workspace is on tmpfs (/dev/shm) when it can be; /tmp is then another filesystem.
        var workspaceStatus = stat()
        var tmpStatus = stat()
        stat(workspace.folder.path, &workspaceStatus)
        stat("/tmp", &tmpStatus)
        if workspaceStatus.st_dev != tmpStatus.st_dev {
            let elsewhere = "/tmp/cowbd-layer-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).cow"
            defer { unlink(elsewhere) }
            let crossing = try workspace.cowbd("snapshot", "disk.cow", elsewhere)
            #expect(crossing.status == 1)
            #expect(
                crossing.standardError.contains("not on the filesystem"),
                "\(crossing.standardError)")
            #expect(access(elsewhere, F_OK) != 0)
        }
        // Nothing changed: the same connection reads and writes, the store has no layer.
        #expect(try connection.pread(at: 0, byteCount: 4096) == [UInt8](repeating: 7, count: 4096))
        try connection.pwrite([UInt8](repeating: 8, count: 4096), at: 4096)
        try connection.flush()
        let info = try workspace.json("info", "disk.cow", "--json")
        #expect(info["chunks_written"] as? Int == 2)
    }

    @Test func checkpointsCountAcrossAnOfflineAndALiveSnapshot() throws {
        let fixture = try LiveFixture(diskByteCount: 1 << 20)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        func write(_ chunk: Int, _ value: UInt8) throws {
            let connection = try fixture.server.connect()
            try connection.pwrite([UInt8](repeating: value, count: 4096), at: UInt64(chunk * 4096))
            try connection.flush()
            try connection.shutdown()
        }
        try write(0, 1)
        try write(1, 1)
        try workspace.succeed("checkpoint", "disk.cow", "cp")
        let atCheckpoint = try fixture.readDisk()
        try write(1, 2)
        try write(2, 2)
        try fixture.server.stop()
        try workspace.succeed("snapshot", "disk.cow", "one.cow")  // offline
        try fixture.server.start()
        try write(3, 3)
        try workspace.succeed("snapshot", "disk.cow", "two.cow")  // live, over a chain
        try write(4, 4)
        try write(0, 5)
        #expect(try fixture.dirtyChunks(since: "cp") == [0, 1, 2, 3, 4])
        let final = try fixture.readDisk()
        try fixture.server.stop()
        #expect(try workspace.cowbd("check", "disk.cow").status == 0)
        try Data(atCheckpoint).write(to: URL(fileURLWithPath: workspace.path("cp.img")))
        try workspace.succeed("export-diff", "disk.cow", "since.diff", "--since", "cp")
        try workspace.succeed("import-diff", "since.diff", "cp.img")
        #expect(workspace.contents("cp.img") == Data(final), "checkpoint + diff != disk")
        // Each layer keeps the checkpoint as it was when it was frozen.
        let one = try workspace.succeed(
            "export-diff", "one.cow", "-", "--since", "cp", "--format", "json")
        #expect(one.contains("\"offset\": 4096, \"length\": 8192"), "\(one)")
    }
}
