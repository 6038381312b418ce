// Checkpoints and incremental diffs through the built binary: write A, checkpoint, write B; the
// incremental diff holds B only, applies on top of an image of base+A and onto a store holding
// it, names its checkpoint in rbd's `f` record, and after a crash of the server covers every held
// chunk so that it still applies. A served store records checkpoints through its control socket,
// and python3-libnbd reads its qemu:dirty-bitmap context; checkpoints block merge.

import Foundation
import NBDClient
import TestSupport
import Testing

extension DiffTests {
    @Test func anIncrementalDiffHoldsWhatChangedSinceItsCheckpoint() throws {
        let workspace = try Self.workspaceWithBase()
        try workspace.succeed("create", "inc.cow", "--base", "base.img", "--size", "64M")
        _ = try Self.changing(workspace, "inc.cow") { connection in
            try connection.pwrite([UInt8](repeating: 0x11, count: 1 << 20), at: 0)
            try connection.pwrite([UInt8](repeating: 0x12, count: 65536), at: 40 << 20)
        }
        try workspace.succeed("export-diff", "inc.cow", "a.diff")
        try workspace.copy("base.img", to: "a.img")
        try workspace.succeed("import-diff", "a.diff", "a.img")
        try workspace.succeed("checkpoint", "inc.cow", "monday")

        let server = ServedStore(store: workspace.path("inc.cow"), socket: workspace.path("i.sock"))
        try server.start()
        try workspace.succeed("checkpoint", "inc.cow", "tuesday")
        try workspace.succeed("checkpoint", "inc.cow", "tuesday", "--delete")
        let connection = try server.connect()
        try connection.pwrite([UInt8](repeating: 0x21, count: 8192), at: 512 << 10)
        try connection.zero(at: 40 << 20, byteCount: 4096)
        try connection.pwrite([UInt8](repeating: 0x22, count: 4096), at: 50 << 20)
        try connection.flush()
        let expected = try connection.allBytes()
        let listing = try workspace.succeed("checkpoint", "inc.cow")
        #expect(
            listing.contains(/monday: .*, 4 chunks changed since/), "while served: \(listing)")
        let bitmap = try workspace.shell(
            "/usr/bin/python3 '\(Self.dirtyBitmapReader)' i.sock monday")
        #expect(
            bitmap.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
                == "[[524288, 532480], [41943040, 41947136], [52428800, 52432896]]",
            "python3-libnbd's qemu:dirty-bitmap:monday: \(bitmap.standardOutput) \(bitmap.standardError)"
        )
        try workspace.copy("inc.cow", to: "crashed.cow")  // what a crash of this server leaves
        try connection.shutdown()
        try server.stop()

        try workspace.succeed(
            "export-diff", "inc.cow", "b.json", "--since", "monday", "--format", "json")
        #expect(
            try Self.listedExtents(workspace, "b.json")
                == [[512 << 10, 8 << 10], [40 << 20, 4096], [50 << 20, 4096]],
            "the incremental diff lists exactly the chunks written since the checkpoint")
        try workspace.succeed("export-diff", "inc.cow", "b.diff", "--since", "monday")
        try workspace.copy("a.img", to: "ab.img")
        try workspace.succeed("import-diff", "b.diff", "ab.img")
        #expect(workspace.contents("ab.img") == Data(expected), "b.diff on top of base+A")
        let incrementalByteCount = workspace.contents("b.diff")?.count ?? .max
        #expect(incrementalByteCount < 4 * 4096 + 512, "b.diff is \(incrementalByteCount) bytes")
        try workspace.copy("base.img", to: "raw.img")
        let onBase = try workspace.cowbd("import-diff", "b.diff", "raw.img")
        expectOneLineError(onBase)
        #expect(workspace.contents("raw.img") == workspace.contents("base.img"))
        try workspace.succeed("create", "ab.cow", "--base", "base.img", "--size", "64M")
        try workspace.succeed("import-diff", "a.diff", "ab.cow")
        try workspace.succeed("import-diff", "b.diff", "ab.cow")
        #expect(try Self.holds(workspace, "ab.cow", expected), "full then incremental onto a store")

        let rbd = try workspace.shell(
            "\"$COWBD\" export-diff inc.cow - --since monday --format rbd > b.rbd")
        #expect(rbd.status == 0, "\(rbd.standardError)")
        let stream = [UInt8](workspace.contents("b.rbd") ?? Data())
        #expect(
            stream.count > 23 && stream[12] == UInt8(ascii: "f") && stream[13..<17] == [6, 0, 0, 0]
                && stream[17..<23].elementsEqual("monday".utf8),
            "the rbd incremental diff does not name its checkpoint in an f record")
        try workspace.succeed("check", "inc.cow")

        // After a crash every held chunk counts as changed: a larger diff that still applies.
        let crashed = try workspace.succeed("checkpoint", "crashed.cow")
        #expect(crashed.contains("not closed cleanly"), "\(crashed)")
        try workspace.succeed(
            "export-diff", "crashed.cow", "c.json", "--since", "monday", "--format", "json")
        #expect(try Self.listedExtents(workspace, "c.json").contains { $0[0] == 0 })
        try workspace.succeed("export-diff", "crashed.cow", "c.diff", "--since", "monday")
        try workspace.copy("a.img", to: "ac.img")
        try workspace.succeed("import-diff", "c.diff", "ac.img")
        #expect(workspace.contents("ac.img") == Data(expected), "the crash's diff on base+A")

        let merge = try workspace.cowbd("merge", "inc.cow", "--into", "merged.img")
        expectOneLineError(merge)
        #expect(merge.standardError.contains("checkpoints (monday)"), "\(merge.standardError)")
        try workspace.succeed("checkpoint", "inc.cow", "monday", "--delete")
        let info = try workspace.json("info", "--json", "inc.cow")
        #expect((info["checkpoints"] as? [Any])?.isEmpty == true, "\(info)")
        let storeByteCount =
            try FileManager.default.attributesOfItem(
                atPath: workspace.path("inc.cow"))[.size] as? Int
        #expect(storeByteCount == (64 << 20 | 1 << 20), "the plain store's size")
        try workspace.succeed("check", "inc.cow")
    }
}
