// The server's side of a live collapse, in process: a layer a killed collapse left whole is
// reused and the open disk rebound with the same bytes; a checkpoint recorded after the rebind
// keeps the new lower in the header; a layer with other bytes is refused, nothing changed.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Waits (at most 60 s) for the collapse to end and returns its status.
private func finished(_ collapses: LiveCollapse) -> LiveCollapse.Status? {
    for _ in 0..<6000 {
        if let status = collapses.status, status.state != .running { return status }
        usleep(10_000)
    }
    return nil
}

@Suite("Live collapse job") struct LiveCollapseJobTests {
    @Test func aLayerAKilledCollapseLeftWholeIsReusedAndTheOpenDiskRebound() throws {
        let scratch = try Scratch()
        var generator = SplitMix64(seed: 31)
        let chain = try RandomChain(in: scratch, storeCount: 4, seed: 31, &generator)
        let layer = FilePath(scratch.path("folded.cow"))
        // The state a server killed after the fold and before the rebind leaves.
        let fold = try LayerFold(topPath: FilePath(chain.top), depth: 2, outputPath: layer)
        _ = try fold.build(createdUnixSeconds: 0)
        fold.close()

        let disk = try VirtualDisk.open(storePath: FilePath(chain.top), swappableLower: true)
        let before = try disk.readBytes(at: 0, count: Int(disk.byteCount))
        let collapses = LiveCollapse(disk: LiveDisk(disk), options: .quiet)
        _ = try collapses.start(.init(depth: 2, layerPath: layer, rateBytesPerSecond: nil))
        let status = finished(collapses)
        collapses.stop()
        #expect(status?.state == .done, "\(String(describing: status?.state))")
        #expect(status?.reusedLayer == true)
        #expect(try disk.readBytes(at: 0, count: Int(disk.byteCount)) == before)
        #expect(disk.swappableLower?.source.path == layer)
        disk.close()
        let listed = LayerChain.list(topStorePath: FilePath(chain.top))
        #expect(listed.map(\.path).dropFirst().first == layer)
        #expect(try chain.topBytes() == before)
    }

    @Test func aCollapseAfterALiveSnapshotFoldsTheLayersUnderTheNewTop() throws {
        let scratch = try Scratch()
        var generator = SplitMix64(seed: 33)
        let chain = try RandomChain(in: scratch, storeCount: 3, seed: 33, &generator)
        let disk = try VirtualDisk.open(storePath: FilePath(chain.top), swappableLower: true)
        let live = LiveDisk(disk)
        let frozen = FilePath(scratch.path("frozen.cow"))
        _ = try live.snapshot(
            storePath: FilePath(chain.top), layerPath: frozen, createdUnixSeconds: 0)
        #expect(live.current !== disk)
        let before = try live.current.readBytes(at: 0, count: Int(disk.byteCount))

        // The new top is over frozen.cow over the chain's stores: fold frozen.cow and the one
        // under it.
        let layer = FilePath(scratch.path("folded.cow"))
        let collapses = LiveCollapse(disk: live, options: .quiet)
        _ = try collapses.start(.init(depth: 2, layerPath: layer, rateBytesPerSecond: nil))
        let status = finished(collapses)
        collapses.stop()
        #expect(status?.state == .done, "\(String(describing: status?.state))")
        #expect(live.current.swappableLower?.source.path == layer)
        #expect(try live.current.readBytes(at: 0, count: Int(disk.byteCount)) == before)
        live.current.close()
        let listed = LayerChain.list(topStorePath: FilePath(chain.top))
        #expect(listed.map(\.path).dropFirst().first == layer)
        #expect(try chain.topBytes() == before)
    }

    @Test func aCheckpointRecordedAfterALiveRebindKeepsTheNewLowerInTheHeader() throws {
        let scratch = try Scratch()
        var generator = SplitMix64(seed: 32)
        let chain = try RandomChain(in: scratch, storeCount: 3, seed: 32, &generator)
        let layer = FilePath(scratch.path("folded.cow"))
        let disk = try VirtualDisk.open(storePath: FilePath(chain.top), swappableLower: true)
        let collapses = LiveCollapse(disk: LiveDisk(disk), options: .quiet)
        _ = try collapses.start(.init(depth: 2, layerPath: layer, rateBytesPerSecond: nil))
        #expect(finished(collapses)?.state == .done)
        collapses.stop()
        // The header a checkpoint writes (its feature bit) starts from the rebound one.
        try disk.addCheckpoint(named: "after", createdUnixSeconds: 0)
        disk.close()
        let store = try StoreFile(path: FilePath(chain.top), access: .unlockedRead)
        defer { store.close() }
        #expect(store.header.basePathGiven == "folded.cow")
        #expect(store.header.hasCheckpoints)
    }

    @Test func aLowerWithOtherBytesIsRefusedAndTheHeaderUnchanged() throws {
        let scratch = try Scratch()
        var generator = SplitMix64(seed: 33)
        let chain = try RandomChain(in: scratch, storeCount: 3, seed: 33, &generator)
        let disk = try VirtualDisk.open(storePath: FilePath(chain.top), swappableLower: true)
        defer { disk.close() }
        let header = try fileBytes(chain.top).prefix(4096)
        // The layer under the top's lower: another disk (the lower's own changes are missing).
        #expect(throws: StoreError.self) {
            try disk.replaceLower(withLayerAt: FilePath(chain.layers[1]), options: .quiet)
        }
        #expect(try fileBytes(chain.top).prefix(4096) == header)
        #expect(disk.swappableLower?.source.path == FilePath(chain.layers[0]))
    }
}
