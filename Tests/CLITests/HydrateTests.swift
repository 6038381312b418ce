// `serve --copy-on-read` and `cowbd hydrate` as a user runs them: chunks a client reads are
// kept without reaching export-diff, a hydrate killed with SIGKILL and rerun completes, and
// the store then serves the same bytes (read back with libnbd) with its base deleted.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("copy-on-read and hydrate") struct HydrateTests {
    @Test func hydrateKilledAndRerunCompletesAndTheStoreServesWithItsBaseGone() throws {
        let workspace = try Workspace()
        let diskByteCount = 8 << 20
        try workspace.writeRandomFile("golden.img", byteCount: diskByteCount, seed: 15)
        var expected = [UInt8](try #require(workspace.contents("golden.img")))
        try workspace.succeed("create", "vm.cow", "--base", "golden.img")

        let server = ServedStore(
            store: workspace.path("vm.cow"), socket: workspace.path("vm.sock"),
            extraArguments: ["--copy-on-read"])
        try server.start()
        let written = [UInt8](repeating: 0xAB, count: 10_000)
        do {
            let connection = try server.connect()
            try connection.pwrite(written, at: 5000)
            let read = try connection.pread(at: 1 << 20, byteCount: 1 << 20)
            #expect(read == Array(expected[(1 << 20)..<(2 << 20)]))
            try connection.flush()
            try connection.shutdown()
        }
        try server.stop()
        expected.replaceSubrange(5000..<15_000, with: written)

        var info = try workspace.json("info", "vm.cow", "--json")
        #expect(info["chunks_hydrated"] as? Int == 256, "the 1 MiB read: 256 chunks of 4 KiB")
        #expect(info["self_contained"] as? Bool == false)
        // The diff holds the client's write alone (chunks 1 to 3), not the chunks it read.
        let listing = try workspace.succeed("export-diff", "vm.cow", "-", "--format", "json")
        let extents = try #require(
            try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [[String: Any]])
        #expect(extents.count == 1)
        #expect(extents.first?["offset"] as? Int == 4096)
        #expect(extents.first?["length"] as? Int == 3 * 4096)

        // Killed mid-run (slowed down so that it is mid-run), then run again.
        let process = Process()
        process.executableURL = workspace.executable
        process.arguments = ["hydrate", "vm.cow", "--rate", "2M"]
        process.currentDirectoryURL = workspace.folder
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try runWithSignalsUnblocked(process)
        usleep(2_500_000)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal, "killed before it finished")
        let killedInfo = try workspace.json("info", "vm.cow", "--json")
        let keptByKilledRun = (killedInfo["chunks_hydrated"] as? Int ?? 0) - 256
        #expect(keptByKilledRun > 0, "what the killed run flushed is kept")
        let rerun = try workspace.json("hydrate", "vm.cow", "--json")
        #expect(rerun["self_contained"] as? Bool == true)
        #expect(
            rerun["chunks_copied"] as? Int == 2048 - 3 - 256 - keptByKilledRun,
            "the rerun copies only what is missing")

        try FileManager.default.removeItem(atPath: workspace.path("golden.img"))
        info = try workspace.json("info", "vm.cow", "--json")
        #expect(info["self_contained"] as? Bool == true)
        #expect(info["chunks_hydrated"] as? Int == 2048 - 3)
        try workspace.succeed("check", "vm.cow")

        let baseless = ServedStore(
            store: workspace.path("vm.cow"), socket: workspace.path("vm.sock"))
        try baseless.start()
        do {
            let connection = try baseless.connect()
            var served: [UInt8] = []
            for byteOffset in stride(from: 0, to: diskByteCount, by: 1 << 20) {
                served += try connection.pread(at: UInt64(byteOffset), byteCount: 1 << 20)
            }
            #expect(served == expected, "the disk reads the same without its base")
            try connection.shutdown()
        }
        try baseless.stop()
    }
}
