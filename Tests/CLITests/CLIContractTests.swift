// The command-line contract of `cowbd create`, `info` and `check`, run on the built binary: the
// happy path, the --json fields, and every error case (exit status, one line on stderr, nothing
// created or changed).

import Foundation
import TestSupport
import Testing

@Suite("cowbd create, info and check") struct CLIContractTests {
    static let baseByteCount = 3 << 20

    /// A folder with `golden.img` (3 MiB of seeded bytes) and `disk.cow` made over it.
    static func workspaceWithStore() throws -> Workspace {
        let workspace = try Workspace()
        try workspace.writeRandomFile("golden.img", byteCount: baseByteCount, seed: 1)
        let created = try workspace.cowbd("create", "disk.cow", "--base", "golden.img")
        guard created.status == 0, created.standardError.isEmpty else {
            throw TestFailure("create exited \(created.status): \(created.standardError)")
        }
        return workspace
    }

    @Test func infoPrintsTheFingerprintStatusAndChunkSize() throws {
        let workspace = try Self.workspaceWithStore()
        let lines = try workspace.succeed("info", "disk.cow").split(separator: "\n")
        #expect(lines.contains { $0.wholeMatch(of: /fingerprint status: *ok/) != nil })
        #expect(lines.contains { $0.wholeMatch(of: /chunk size: *4 KiB \(4096 bytes\)/) != nil })
    }

    @Test func infoJSONGivesSizesCountsBaseAndStatus() throws {
        let workspace = try Self.workspaceWithStore()
        let info = try workspace.json("info", "--json", "disk.cow")
        #expect(info["size"] as? Int == Self.baseByteCount)
        #expect(info["chunk_size"] as? Int == 4096)
        #expect(info["chunks_total"] as? Int == 768)
        #expect(info["chunks_written"] as? Int == 0)
        #expect(info["allocated_bytes"] as? Int == 0)
        #expect(info["base"] as? String == workspace.path("golden.img"))
        #expect(info["base_given"] as? String == "golden.img")
        #expect(info["base_kind"] as? String == "raw")
        #expect(info["base_size"] as? Int == Self.baseByteCount)
        #expect(info["fingerprint_status"] as? String == "ok")
        #expect((info["base_fingerprint"] as? String)?.count == 32)
        #expect(info["format_version"] as? Int == 1)
        #expect((info["created"] as? String)?.hasSuffix("Z") == true)
    }

    @Test func checkOfAFreshStoreIsConsistentInTextAndJSON() throws {
        let workspace = try Self.workspaceWithStore()
        let text = try workspace.cowbd("check", "disk.cow")
        #expect(text.status == 0 && text.standardError.isEmpty, "\(text.standardError)")
        #expect(text.standardOutput.contains("disk.cow: consistent"))
        let report = try workspace.json("check", "--json", "disk.cow")
        #expect(report["consistent"] as? Bool == true)
        #expect(report["problems"] as? Int == 0)
        #expect((report["findings"] as? [Any])?.isEmpty == true)
        #expect(report["chunks_total"] as? Int == 768)
    }

    @Test func createWithSizeAndChunkSizeReportsThemInJSON() throws {
        let workspace = try Self.workspaceWithStore()
        let created = try workspace.json(
            "create", "grown.cow", "--base", "golden.img", "--size", "5M", "--chunk-size",
            "64KiB", "--json")
        #expect(created["size"] as? Int == 5 << 20)
        #expect(created["chunk_size"] as? Int == 65536)
        #expect(created["chunks_total"] as? Int == 80)
    }

    @Test func createOverAnExistingStoreFailsAndLeavesItUntouched() throws {
        let workspace = try Self.workspaceWithStore()
        let before = workspace.contents("disk.cow")
        let result = try workspace.cowbd("create", "disk.cow", "--base", "golden.img")
        expectOneLineError(result)
        #expect(result.standardError.contains("already exists"))
        #expect(workspace.contents("disk.cow") == before)
    }

    @Test(
        arguments: [
            ["--base", "missing.img"],
            ["--base", "golden.img", "--chunk-size", "3K"],
            ["--base", "golden.img", "--chunk-size", "2M"],
            ["--base", "golden.img", "--chunk-size", "0"],
            ["--base", "golden.img", "--chunk-size", "banana"],
            ["--base", "golden.img", "--size", "1M"],
        ])
    func createWithABadArgumentFailsAndLeavesNothingBehind(arguments: [String]) throws {
        let workspace = try Self.workspaceWithStore()
        let result = try runCommand(
            workspace.executable, ["create", "new.cow"] + arguments, in: workspace.folder)
        expectOneLineError(result)
        let leftovers = try workspace.entries { $0 == "new.cow" || $0.contains(".tmp.") }
        #expect(leftovers.isEmpty, "left behind: \(leftovers)")
    }

    @Test func createInAMissingFolderFails() throws {
        let workspace = try Self.workspaceWithStore()
        expectOneLineError(
            try workspace.cowbd("create", "nofolder/new.cow", "--base", "golden.img"))
    }

    @Test func infoAndCheckOfAMissingFileFail() throws {
        let workspace = try Self.workspaceWithStore()
        expectOneLineError(try workspace.cowbd("info", "missing.cow"))
        expectOneLineError(try workspace.cowbd("check", "missing.cow"), status: 2)
    }

    @Test func infoAndCheckOfAGarbageFileFailAndLeaveItUntouched() throws {
        let workspace = try Self.workspaceWithStore()
        try workspace.writeRandomFile("garbage.cow", byteCount: 1 << 20, seed: 2)
        let before = workspace.contents("garbage.cow")
        expectOneLineError(try workspace.cowbd("info", "garbage.cow"))
        expectOneLineError(try workspace.cowbd("check", "garbage.cow"), status: 2)
        expectOneLineError(try workspace.cowbd("check", "--repair", "garbage.cow"), status: 2)
        #expect(workspace.contents("garbage.cow") == before)
    }

    @Test func infoAndCheckOfATruncatedStoreFail() throws {
        let workspace = try Self.workspaceWithStore()
        try FileManager.default.copyItem(
            atPath: workspace.path("disk.cow"), toPath: workspace.path("truncated.cow"))
        #expect(truncate(workspace.path("truncated.cow"), 100_000) == 0)
        expectOneLineError(try workspace.cowbd("info", "truncated.cow"))
        expectOneLineError(try workspace.cowbd("check", "truncated.cow"), status: 2)
        #expect(truncate(workspace.path("truncated.cow"), 2000) == 0)
        expectOneLineError(try workspace.cowbd("check", "truncated.cow"), status: 2)
    }

    @Test func checkOfAStoreInUseFailsWhileInfoStillWorks() throws {
        let workspace = try Self.workspaceWithStore()
        // What a serving cowbd holds: an exclusive flock on the store.
        let holder = open(workspace.path("disk.cow"), O_RDONLY)
        #expect(holder >= 0)
        defer { close(holder) }
        #expect(flock(holder, LOCK_EX) == 0)
        let check = try workspace.cowbd("check", "disk.cow")
        expectOneLineError(check, status: 2)
        #expect(check.standardError.contains("in use"))
        let info = try workspace.cowbd("info", "disk.cow")
        #expect(info.status == 0, "\(info.standardError)")
    }

    @Test func aChangedBaseMakesCheckExit1AndInfoReportItWithoutChangingTheStore() throws {
        let workspace = try Self.workspaceWithStore()
        try FileManager.default.copyItem(
            atPath: workspace.path("golden.img"), toPath: workspace.path("changing.img"))
        try workspace.succeed("create", "changing.cow", "--base", "changing.img")
        let base = try FileHandle(
            forUpdating: workspace.folder.appendingPathComponent("changing.img"))
        let first = try base.read(upToCount: 1) ?? Data([0])
        try base.seek(toOffset: 0)
        try base.write(contentsOf: Data([first[0] ^ 0xFF]))
        try base.close()
        let before = workspace.contents("changing.cow")

        let check = try workspace.cowbd("check", "changing.cow")
        expectOneLineError(check, status: 1)
        #expect(check.standardOutput.contains("has changed"), "\(check.standardOutput)")
        expectOneLineError(try workspace.cowbd("check", "--repair", "changing.cow"), status: 1)
        let info = try workspace.json("info", "--json", "changing.cow")
        #expect((info["fingerprint_status"] as? String)?.hasPrefix("changed: ") == true)
        #expect(workspace.contents("changing.cow") == before)

        try FileManager.default.removeItem(atPath: workspace.path("changing.img"))
        let missing = try workspace.json("info", "--json", "changing.cow")
        #expect(missing["fingerprint_status"] as? String == "missing")
        #expect(missing["base"] is NSNull)
        expectOneLineError(try workspace.cowbd("check", "changing.cow"), status: 1)
    }
}
