// Chains of stores through the built binary and a libnbd client: two uppers over one lower
// served at once, and import-diff onto a store that is a chain (it lands in the top only).
// Each disk is compared with a model kept by the test; lower layers byte for byte.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd chains served and diffed") struct ChainServeTests {
    static let diskByteCount = 4 << 20

    /// `count` writes of seeded random bytes at seeded offsets (any alignment), mirrored in
    /// `model`, then FLUSH.
    static func writeScattered(
        _ connection: NBDConnection, model: inout [UInt8], count: Int, seed: UInt64
    ) throws {
        var generator = SplitMix64(seed: seed)
        for _ in 0..<count {
            let byteOffset = Int(generator.next() % UInt64(model.count))
            let byteCount = min(model.count - byteOffset, 1 + Int(generator.next() % 100_000))
            let bytes = (0..<byteCount).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            try connection.pwrite(bytes, at: UInt64(byteOffset))
            model.replaceSubrange(byteOffset..<(byteOffset + byteCount), with: bytes)
        }
        try connection.flush()
    }

    /// Serves `store`, applies seeded writes to `model` and the disk, and returns the served
    /// disk afterwards.
    static func served(
        _ workspace: Workspace, _ store: String, model: inout [UInt8], seed: UInt64
    ) throws -> [UInt8] {
        let server = ServedStore(
            store: workspace.path(store), socket: workspace.path("\(store).sock"),
            extraArguments: ["--log-level", "warning"])
        try server.start()
        let connection = try server.connect()
        try writeScattered(connection, model: &model, count: 40, seed: seed)
        let bytes = try connection.allBytes()
        try connection.shutdown()
        try server.stop()
        return bytes
    }

    @Test func twoUppersServedAtOnceEachKeepTheirOwnWritesAndTheLowerIsUnchanged() throws {
        let workspace = try Workspace()
        try workspace.writeRandomFile("base.img", byteCount: Self.diskByteCount, seed: 21)
        try workspace.succeed("create", "lower.cow", "--base", "base.img", "--chunk-size", "16K")
        var lowerModel = [UInt8](workspace.contents("base.img") ?? Data())
        #expect(try Self.served(workspace, "lower.cow", model: &lowerModel, seed: 22) == lowerModel)
        let lowerFile = workspace.contents("lower.cow")
        let baseFile = workspace.contents("base.img")
        var servers: [ServedStore] = []
        var connections: [NBDConnection] = []
        for name in ["a.cow", "b.cow"] {
            try workspace.succeed("create", name, "--base", "lower.cow")
            let server = ServedStore(
                store: workspace.path(name), socket: workspace.path("\(name).sock"),
                extraArguments: ["--log-level", "warning"])
            try server.start()
            servers.append(server)
            connections.append(try server.connect())
        }
        // Both servers run; their writes interleave, each into its own upper.
        var models = [lowerModel, lowerModel]
        for step in 0..<4 {
            for index in 0..<2 {
                try Self.writeScattered(
                    connections[index], model: &models[index], count: 10,
                    seed: 100 + UInt64(step * 2 + index))
            }
        }
        for index in 0..<2 {
            #expect(try connections[index].allBytes() == models[index], "upper \(index)")
            try connections[index].shutdown()
            try servers[index].stop()
        }
        #expect(models[0] != models[1])
        #expect(workspace.contents("lower.cow") == lowerFile, "the lower store changed")
        #expect(workspace.contents("base.img") == baseFile, "the base changed")
        #expect(try workspace.servedDisk("lower.cow") == lowerModel)
        try workspace.succeed("check", "a.cow")
        try workspace.succeed("check", "b.cow")
    }

    /// base.img <- a.cow <- mid.cow (snapshot) <- top.cow, the lower layers written; a diff made
    /// over the disk under top.cow imports into top.cow alone.
    @Test func importDiffOntoAChainAppliesToItsTopAndLeavesTheLowerLayersUnchanged() throws {
        let workspace = try Workspace()
        try workspace.writeRandomFile("base.img", byteCount: Self.diskByteCount, seed: 31)
        var model = [UInt8](workspace.contents("base.img") ?? Data())
        try workspace.succeed("create", "a.cow", "--base", "base.img")
        #expect(try Self.served(workspace, "a.cow", model: &model, seed: 32) == model)
        try workspace.succeed("create", "top.cow", "--base", "a.cow", "--chunk-size", "64K")
        #expect(try Self.served(workspace, "top.cow", model: &model, seed: 33) == model)
        try workspace.succeed("snapshot", "top.cow", "mid.cow")

        // The diff: changes over a flat copy of the disk under top.cow (a diff is made and
        // applied over its target's base), made by another store.
        try workspace.succeed("merge", "top.cow", "--output", "flat.img")
        #expect(workspace.contents("flat.img") == Data(model))
        try workspace.succeed("create", "source.cow", "--base", "flat.img")
        #expect(try Self.served(workspace, "source.cow", model: &model, seed: 35) == model)
        try workspace.succeed("export-diff", "source.cow", "changes.diff")

        let lowers = ["mid.cow", "a.cow", "base.img"].map { ($0, workspace.contents($0)) }
        try workspace.succeed("import-diff", "changes.diff", "top.cow")
        for (name, bytes) in lowers {
            #expect(workspace.contents(name) == bytes, "\(name) changed")
        }
        #expect(try workspace.servedDisk("top.cow") == model)
        // The top takes writes over the imported chunks as any store does.
        #expect(try Self.served(workspace, "top.cow", model: &model, seed: 34) == model)
        for (name, bytes) in lowers {
            #expect(workspace.contents(name) == bytes, "\(name) changed")
        }
        let info = try workspace.json("info", "--json", "top.cow")
        let chain = try #require(info["chain"] as? [[String: Any]])
        #expect(chain.count == 4)
        try workspace.succeed("check", "top.cow")
    }
}
