// The command-line contract of `cowbd export-diff --to NAME`: the checkpoint is recorded with
// the diff, a failed export records none and writes no OUT, and bad names are refused before
// the store is opened.

import Foundation
import TestSupport
import Testing

// In the contract suite, so the cli stage of tools/test (CLITests.CLIContractTests) runs it.
extension CLIContractTests {
    /// The names `cowbd checkpoint COW --json` lists.
    static func checkpointNames(_ workspace: Workspace) throws -> [String] {
        let listed = try workspace.succeed("checkpoint", "disk.cow", "--json")
        let entries = try JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [[String: Any]]
        return (entries ?? []).compactMap { $0["name"] as? String }
    }

    @Test func toRecordsTheCheckpointAndNamesItAfterTheFromRecord() throws {
        let workspace = try Self.workspaceWithStore()
        try workspace.succeed(
            "export-diff", "disk.cow", "full.rbd", "--format", "rbd", "--to", "s1")
        #expect(try Self.checkpointNames(workspace) == ["s1"])
        try workspace.succeed(
            "export-diff", "disk.cow", "inc.rbd", "--format", "rbd", "--since", "s1", "--to", "s2")
        #expect(try Self.checkpointNames(workspace).sorted() == ["s1", "s2"])
        // Banner, then f (le32 2, "s1"), then t (le32 2, "s2"), then s.
        let stream = [UInt8](try #require(workspace.contents("inc.rbd")))
        let expected =
            Array("rbd diff v1\n".utf8) + Array("f".utf8) + [2, 0, 0, 0] + Array("s1".utf8)
            + Array("t".utf8) + [2, 0, 0, 0] + Array("s2".utf8) + Array("s".utf8)
        #expect(Array(stream.prefix(expected.count)) == expected)
    }

    @Test func aFailedExportRecordsNoCheckpointAndWritesNoOutput() throws {
        let workspace = try Self.workspaceWithStore()
        try workspace.succeed(
            "export-diff", "disk.cow", "full.rbd", "--format", "rbd", "--to", "s1")
        let existing = workspace.contents("full.rbd")
        // OUT exists (no --force): refused, and s2 not recorded.
        expectOneLineError(
            try workspace.cowbd(
                "export-diff", "disk.cow", "full.rbd", "--format", "rbd", "--to", "s2"),
            status: 1)
        #expect(workspace.contents("full.rbd") == existing)
        // A name in use: refused before OUT is made.
        expectOneLineError(
            try workspace.cowbd(
                "export-diff", "disk.cow", "again.rbd", "--format", "rbd", "--to", "s1"),
            status: 1)
        #expect(workspace.contents("again.rbd") == nil)
        #expect(try Self.checkpointNames(workspace) == ["s1"])
    }

    @Test(arguments: [["--to", "bad/name"], ["--to", "-x"], ["--since", "s1", "--to", "s1"]])
    func aBadEndCheckpointIsAUsageError(arguments: [String]) throws {
        let workspace = try Self.workspaceWithStore()
        let before = workspace.contents("disk.cow")
        let result = try runCommand(
            workspace.executable,
            ["export-diff", "disk.cow", "out.rbd", "--format", "rbd"]
                + arguments, in: workspace.folder)
        #expect(result.status == 64, "\(result.standardError)")
        #expect(workspace.contents("out.rbd") == nil)
        #expect(workspace.contents("disk.cow") == before)
    }
}
