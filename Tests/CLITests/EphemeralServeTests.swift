// `serve --ephemeral`: writes go to a temporary store that has no name, so neither a clean
// stop nor a SIGKILL leaves a file behind, and the image served is never changed.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd serve --ephemeral") struct EphemeralServeTests {
    /// Serves `image` with --ephemeral (temporary folder `tmp`), writes, reads the writes back
    /// on a second connection, then stops the server (`kill` or SIGTERM).
    static func serveAndWrite(_ workspace: Workspace, image: String, kill: Bool) throws {
        try FileManager.default.createDirectory(
            atPath: workspace.path("tmp"), withIntermediateDirectories: true)
        let before = workspace.contents(image)
        let server = ServedStore(
            store: workspace.path(image), socket: workspace.path("nbd.sock"),
            extraArguments: ["--ephemeral", "--ephemeral-dir", workspace.path("tmp")])
        try server.start()
        let written = [UInt8](repeating: 0x5A, count: 12_288)
        let connection = try server.connect()
        try connection.pwrite(written, at: 4096)
        try connection.flush()
        let second = try server.connect()
        #expect(try second.pread(at: 4096, byteCount: 12_288) == written)
        #expect(try workspace.entries { _ in true }.contains("tmp"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: workspace.path("tmp")) == [])
        if kill {
            server.kill()
        } else {
            try connection.shutdown()
            try second.shutdown()
            try server.stop()
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: workspace.path("tmp")) == [])
        #expect(workspace.contents(image) == before, "\(image) changed")
    }

    @Test(arguments: [false, true])
    func aRawImageIsServedWithWritesThatLeaveNothing(kill: Bool) throws {
        let workspace = try Workspace()
        try workspace.writeRandomFile("golden.img", byteCount: 1 << 20, seed: 8)
        try Self.serveAndWrite(workspace, image: "golden.img", kill: kill)
    }

    @Test(arguments: [false, true])
    func aStoreIsServedAsALowerAndLeftUnchanged(kill: Bool) throws {
        let workspace = try Workspace()
        try workspace.writeRandomFile("golden.img", byteCount: 1 << 20, seed: 9)
        try workspace.succeed("create", "disk.cow", "--base", "golden.img")
        try Self.serveAndWrite(workspace, image: "disk.cow", kill: kill)
        // Still a healthy store, with nothing written.
        let info = try workspace.json("info", "--json", "disk.cow")
        #expect(info["chunks_written"] as? Int == 0)
    }

    @Test func aCompressedImageIsServed() throws {
        let workspace = try Workspace()
        try workspace.writeRandomFile("golden.img", byteCount: 1 << 20, seed: 10)
        try workspace.succeed("compress", "golden.img", "golden.lz4")
        try Self.serveAndWrite(workspace, image: "golden.lz4", kill: false)
    }
}
