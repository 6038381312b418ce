// A store fully hydrated from a network base, with the base server gone and its image deleted:
// the commands that read the store alone (info, check, export-diff, merge --output) work, and
// the flat image merge writes equals the disk (cmp against the bytes the test computed).

import Foundation
import NBDClient
import TestSupport
import Testing

extension HydrateTests {
    @Test func aSelfContainedStoreWorksWithItsNetworkBaseGone() throws {
        let workspace = try Workspace()
        let diskByteCount = 4 << 20
        try workspace.writeRandomFile("golden.img", byteCount: diskByteCount, seed: 44)
        var expected = [UInt8](try #require(workspace.contents("golden.img")))
        try workspace.succeed("create", "golden.cow", "--base", "golden.img")
        let base = ServedStore(
            store: workspace.path("golden.cow"), socket: workspace.path("base.sock"),
            extraArguments: ["--read-only"])
        try base.start()
        defer { base.kill() }
        let uri = "nbd+unix:///?socket=\(workspace.path("base.sock"))"
        try workspace.succeed("create", "vm.cow", "--base", uri)
        let disk = ServedStore(store: workspace.path("vm.cow"), socket: workspace.path("vm.sock"))
        try disk.start()
        let written = [UInt8](repeating: 0x6E, count: 3 * 4096)
        do {
            let connection = try disk.connect()
            try connection.pwrite(written, at: 8192)
            try connection.flush()
            try connection.shutdown()
        }
        try disk.stop()
        expected.replaceSubrange(8192..<(8192 + written.count), with: written)
        let hydrated = try workspace.json("hydrate", "vm.cow", "--json")
        #expect(hydrated["self_contained"] as? Bool == true)

        base.kill()
        try FileManager.default.removeItem(atPath: workspace.path("golden.cow"))
        try FileManager.default.removeItem(atPath: workspace.path("golden.img"))
        let info = try workspace.json("info", "vm.cow", "--json")
        #expect(info["self_contained"] as? Bool == true)
        #expect(info["chunks_hydrated"] as? Int == 1024 - 3)
        #expect(info["base_given"] as? String == uri)
        try workspace.succeed("check", "vm.cow")
        let listing = try workspace.succeed("export-diff", "vm.cow", "-", "--format", "json")
        let extents = try #require(
            try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]])
        #expect(extents.count == 1 && extents.first?["offset"] as? Int == 8192, "\(listing)")
        #expect(extents.first?["length"] as? Int == written.count)
        try workspace.succeed("export-diff", "vm.cow", "vm.rbd", "--format", "rbd")
        #expect((workspace.contents("vm.rbd")?.count ?? 0) > written.count)
        try workspace.succeed("merge", "vm.cow", "--output", "flat.img")
        try Data(expected).write(to: workspace.folder.appendingPathComponent("expected.img"))
        let compared = try workspace.shell("cmp flat.img expected.img")
        #expect(compared.status == 0, "\(compared.standardOutput)")
    }
}
