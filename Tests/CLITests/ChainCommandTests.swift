// The command-line contract of chains and snapshots: create over a store, info's chain
// listing (text and --json), check of every layer, snapshot, and the refusals (one line on
// stderr naming the layer, nothing changed).

import Foundation
import TestSupport
import Testing

@Suite("cowbd chains and snapshots") struct ChainCommandTests {
    /// golden.img <- lower.cow (64 KiB chunks) <- top.cow.
    static func workspaceWithChain() throws -> Workspace {
        let workspace = try Workspace()
        try workspace.writeRandomFile("golden.img", byteCount: 1 << 20, seed: 3)
        try workspace.succeed(
            "create", "lower.cow", "--base", "golden.img", "--chunk-size", "64K")
        try workspace.succeed("create", "top.cow", "--base", "lower.cow")
        return workspace
    }

    @Test func infoJSONListsTheChainTopToBottom() throws {
        let workspace = try Self.workspaceWithChain()
        try workspace.succeed("snapshot", "top.cow", "snap.cow")
        let info = try workspace.json("info", "--json", "top.cow")
        let chain = try #require(info["chain"] as? [[String: Any]])
        #expect(chain.map { $0["kind"] as? String } == ["cow", "cow", "cow", "raw"])
        #expect(
            chain.map { ($0["path"] as? String)?.split(separator: "/").last.map(String.init) }
                == ["top.cow", "snap.cow", "lower.cow", "golden.img"])
        #expect(chain.allSatisfy { $0["size"] as? Int == 1 << 20 })
        #expect(chain.prefix(3).allSatisfy { $0["chunks_written"] as? Int == 0 })
        #expect(chain.map { $0["frozen"] as? Bool } == [false, true, false, nil])
        #expect(info["base_kind"] as? String == "cow")
        let text = try workspace.succeed("info", "top.cow")
        #expect(text.contains("4. ") && text.contains("golden.img: raw"))
    }

    @Test func checkChecksEveryLayer() throws {
        let workspace = try Self.workspaceWithChain()
        let output = try workspace.succeed("check", "top.cow")
        #expect(output.contains("layer 2: ") && output.contains("lower.cow: consistent"))
        let report = try workspace.json("check", "--json", "top.cow")
        let layers = try #require(report["layers"] as? [[String: Any]])
        #expect(layers.count == 1 && layers.first?["consistent"] as? Bool == true)
    }

    @Test func snapshotOntoAnExistingFileIsRefusedAndChangesNothing() throws {
        let workspace = try Self.workspaceWithChain()
        let before = workspace.contents("lower.cow")
        let result = try workspace.cowbd("snapshot", "lower.cow", "top.cow")
        expectOneLineError(result)
        #expect(result.standardError.contains("top.cow"))
        #expect(workspace.contents("lower.cow") == before)
    }

    @Test func aChangedLowerIsRefusedWithOneLineNamingIt() throws {
        let workspace = try Self.workspaceWithChain()
        let before = workspace.contents("top.cow")
        // Replace the lower by another store over the same base: same size, other bytes.
        try FileManager.default.removeItem(atPath: workspace.path("lower.cow"))
        try workspace.writeRandomFile("other.img", byteCount: 1 << 20, seed: 4)
        try workspace.succeed("create", "lower.cow", "--base", "other.img")
        let result = try workspace.cowbd("snapshot", "top.cow", "snap.cow")
        expectOneLineError(result)
        #expect(
            result.standardError.contains("lower.cow") && result.standardError.contains("changed"))
        #expect(workspace.contents("top.cow") == before)
        #expect(workspace.contents("snap.cow") == nil)
    }

    @Test func aMissingLowerIsRefusedAtCreateAndInfoShowsWhereTheChainBreaks() throws {
        let workspace = try Self.workspaceWithChain()
        try FileManager.default.removeItem(atPath: workspace.path("golden.img"))
        let result = try workspace.cowbd("create", "new.cow", "--base", "top.cow")
        expectOneLineError(result)
        #expect(result.standardError.contains("lower.cow"))
        #expect(workspace.contents("new.cow") == nil)
        let info = try workspace.json("info", "--json", "top.cow")
        let chain = try #require(info["chain"] as? [[String: Any]])
        #expect(chain.last?["kind"] as? String == "missing")
    }

    @Test func snapshotTwiceStacksAndTheDiskReadsTheSame() throws {
        let workspace = try Self.workspaceWithChain()
        try workspace.succeed("snapshot", "top.cow", "s1.cow")
        let again = try workspace.succeed("snapshot", "top.cow", "s1.cow")
        #expect(again.contains("nothing to do"))
        try workspace.succeed("snapshot", "top.cow", "s2.cow")
        try workspace.succeed("merge", "top.cow", "--output", "flat.img")
        #expect(workspace.contents("flat.img") == workspace.contents("golden.img"))
        let info = try workspace.json("info", "--json", "top.cow")
        #expect((info["chain"] as? [Any])?.count == 5)
    }
}
