// `cowbd export-diff` / `import-diff` through the built binary: random writes, zeroes and trims
// on a served store over a grown base; each format exported and imported onto a copy of the base
// (raw) and onto another store over the same base, which must then equal the disk as served. An
// independent Python reader (tools/lib/rbd_diff_reader.py) applies the rbd stream and writes a v2
// one; damaged diffs and diffs for another base are refused and leave the target unchanged;
// imports killed with SIGKILL at random instants finish when run again. Checkpoints: an
// incremental diff holds only what changed since one, applies on top of the image it was made
// from, and stays complete after a crash. COWBD_DIFF_SEED picks the seed.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd export-diff and import-diff") struct DiffTests {
    static let baseByteCount = 48 << 20
    static let diskByteCount = 64 << 20
    static let trialCount = 5
    static let seed = seedFromEnvironment("COWBD_DIFF_SEED")
    /// The independent rbd diff v1 reader, beside this package's tools.
    static let rbdReader = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("tools/lib/rbd_diff_reader.py").path
    /// An independent reader of qemu:dirty-bitmap contexts (python3-libnbd), beside it.
    static let dirtyBitmapReader = URL(fileURLWithPath: rbdReader)
        .deletingLastPathComponent().appendingPathComponent("dirty_bitmap.py").path

    /// A workspace holding base.img (32 MiB random, then a hole to 48 MiB) and a store `store`
    /// over it grown to 64 MiB.
    static func workspaceWithBase() throws -> Workspace {
        let workspace = try Workspace()
        try workspace.writeRandomFile("base.img", byteCount: 32 << 20, seed: seed)
        try FileHandle(forWritingTo: URL(fileURLWithPath: workspace.path("base.img")))
            .truncate(atOffset: UInt64(baseByteCount))
        return workspace
    }

    /// 150 writes, zeroes and trims at seeded offsets, unaligned but for the trims.
    static func scatteredChanges(_ connection: NBDConnection, seed: UInt64) throws {
        for index in 0..<150 {
            let byteOffset = (Int(seed % 1_000_000) * 7919 + index * 1_048_573) % 66_000_000
            var byteCount = (index * 7717 + Int(seed % 1_000_000)) % 200_000 + 1
            byteCount = min(byteCount, diskByteCount - byteOffset)
            switch index % 5 {
            case 0, 1, 2:
                let bytes = [UInt8](repeating: UInt8(index % 250 + 1), count: byteCount)
                try connection.pwrite(bytes, at: UInt64(byteOffset))
            case 3: try connection.zero(at: UInt64(byteOffset), byteCount: UInt64(byteCount))
            default:
                let start = byteOffset & ~4095
                let end = min(diskByteCount, (byteOffset + byteCount + 4095) & ~4095)
                try connection.trim(at: UInt64(start), byteCount: UInt64(end - start))
            }
        }
        try connection.flush()
    }

    /// A workspace with base.img and disk.cow (64 MiB over it) holding the scattered changes,
    /// and the disk as served, also saved as expected.img. A live export-diff is the same disk.
    static func changedStore() throws -> (Workspace, [UInt8]) {
        let workspace = try workspaceWithBase()
        try workspace.succeed("create", "disk.cow", "--base", "base.img", "--size", "64M")
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("s.sock"),
            extraArguments: ["--log-level", "error"])
        try server.start()
        let connection = try server.connect()
        try scatteredChanges(connection, seed: seed)
        let expected = try connection.allBytes()
        // Served, the server exports it live (docs/CONTROL.md, "Live export-diff").
        try workspace.succeed("export-diff", "disk.cow", "live.diff")
        try connection.shutdown()
        try server.stop()
        try workspace.succeed("create", "live.cow", "--base", "base.img", "--size", "64M")
        try workspace.succeed("import-diff", "live.diff", "live.cow")
        #expect(try workspace.servedDisk("live.cow") == expected, "live export-diff != disk")
        try Data(expected).write(to: workspace.folder.appendingPathComponent("expected.img"))
        return (workspace, expected)
    }

    /// Serves `store`, runs `change` on a connection, and returns the disk then.
    static func changing(
        _ workspace: Workspace, _ store: String, _ change: (NBDConnection) throws -> Void
    ) throws -> [UInt8] {
        let server = ServedStore(
            store: workspace.path(store), socket: workspace.path("\(store).sock"),
            extraArguments: ["--log-level", "error"])
        try server.start()
        let connection = try server.connect()
        try change(connection)
        try connection.flush()
        let bytes = try connection.allBytes()
        try connection.shutdown()
        try server.stop()
        return bytes
    }

    /// Whether TARGET's disk is `expected`: a raw image as it is, a store flattened by merge.
    static func holds(_ workspace: Workspace, _ target: String, _ expected: [UInt8]) throws -> Bool
    {
        guard target.hasSuffix(".cow") else { return workspace.contents(target) == Data(expected) }
        try? FileManager.default.removeItem(atPath: workspace.path("held-flat.img"))
        let merge = try workspace.cowbd("merge", target, "--output", "held-flat.img")
        return merge.status == 0 && workspace.contents("held-flat.img") == Data(expected)
    }

    /// The extents of a `--format json` listing, as (offset, length).
    static func listedExtents(_ workspace: Workspace, _ name: String) throws -> [[Int]] {
        let data = workspace.contents(name) ?? Data()
        let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] ?? []
        return list.map { [$0["offset"] as? Int ?? -1, $0["length"] as? Int ?? -1] }.sorted {
            $0.lexicographicallyPrecedes($1)
        }
    }

    @Test func everyFormatExportsAndImportsOntoRawImagesAndStores() throws {
        let (workspace, expected) = try Self.changedStore()
        let disk = Data(expected)
        let base = workspace.contents("base.img")
        try workspace.succeed("export-diff", "disk.cow", "disk.diff")
        try workspace.succeed("export-diff", "disk.cow", "disk.rbd", "--format", "rbd")
        try workspace.succeed("export-diff", "disk.cow", "disk.json", "--format", "json")

        expectOneLineError(try workspace.cowbd("export-diff", "disk.cow", "disk.diff"))
        let native = workspace.contents("disk.diff")
        try workspace.succeed("export-diff", "disk.cow", "disk.diff", "--force", "--format", "json")
        #expect(workspace.contents("disk.diff") != native, "--force did not replace OUT")
        try workspace.succeed("export-diff", "disk.cow", "disk.diff", "--force")
        #expect(workspace.contents("disk.diff") == native, "native export is not repeatable")
        #expect(try workspace.entries { $0.contains(".tmp.") }.isEmpty, "a temporary file left")
        try workspace.succeed("export-diff", "disk.cow", "/dev/null", "--format", "rbd")
        var status = stat()
        #expect(stat("/dev/null", &status) == 0 && status.st_mode & S_IFMT == S_IFCHR)

        try workspace.copy("base.img", to: "raw.img")
        try workspace.succeed("import-diff", "disk.diff", "raw.img", "--dry-run")
        #expect(workspace.contents("raw.img") == base, "--dry-run wrote")
        expectOneLineError(try workspace.cowbd("import-diff", "disk.json", "raw.img", "--force"))
        #expect(workspace.contents("raw.img") == base, "a json listing was imported")
        try workspace.succeed("import-diff", "disk.diff", "raw.img")
        #expect(workspace.contents("raw.img") == disk, "native diff onto a raw copy")

        try workspace.copy("base.img", to: "raw.img")
        expectOneLineError(try workspace.cowbd("import-diff", "disk.rbd", "raw.img"))
        #expect(workspace.contents("raw.img") == base, "rbd without --force wrote")
        try workspace.succeed("import-diff", "disk.rbd", "raw.img", "--force")
        #expect(workspace.contents("raw.img") == disk, "rbd diff onto a raw copy")

        try workspace.succeed("create", "other.cow", "--base", "base.img", "--size", "64M")
        try workspace.succeed("import-diff", "disk.diff", "other.cow")
        #expect(try Self.holds(workspace, "other.cow", expected), "native diff onto a store")
        try workspace.succeed("check", "other.cow")
        let server = ServedStore(
            store: workspace.path("other.cow"), socket: workspace.path("o.sock"))
        try server.start()
        let refused = try workspace.cowbd("import-diff", "disk.diff", "other.cow")
        expectOneLineError(refused)
        #expect(refused.standardError.contains("in use"), "\(refused.standardError)")
        try server.stop()

        try FileManager.default.removeItem(atPath: workspace.path("other.cow"))
        try workspace.succeed("create", "other.cow", "--base", "base.img", "--size", "64M")
        let piped = try workspace.shell(
            "set -o pipefail; \"$COWBD\" export-diff disk.cow - | \"$COWBD\" import-diff - other.cow"
        )
        #expect(piped.status == 0, "\(piped.standardError)")
        #expect(try Self.holds(workspace, "other.cow", expected), "a piped diff onto a store")
        try workspace.copy("base.img", to: "raw.img")
        let rbdPiped = try workspace.shell(
            "set -o pipefail; \"$COWBD\" export-diff disk.cow - --format rbd"
                + " | \"$COWBD\" import-diff - raw.img --force")
        #expect(rbdPiped.status == 0, "\(rbdPiped.standardError)")
        #expect(workspace.contents("raw.img") == disk, "a piped rbd diff onto a raw copy")
        #expect(try workspace.entries { $0.contains("cowbd-import-diff") }.isEmpty, "spool left")

        // The independent reader applies rbd v1, checks it against the json listing and
        // writes v2, which cowbd must import.
        try workspace.copy("base.img", to: "py.img")
        let reader = try runCommand(
            URL(fileURLWithPath: "/usr/bin/python3"),
            [Self.rbdReader, "disk.rbd", "py.img", "disk.json", "disk.rbd2"], in: workspace.folder)
        #expect(reader.status == 0, "\(reader.standardError)")
        #expect(workspace.contents("py.img") == disk, "the python reader's image")
        try workspace.copy("base.img", to: "raw.img")
        try workspace.succeed("import-diff", "disk.rbd2", "raw.img", "--force")
        #expect(workspace.contents("raw.img") == disk, "rbd v2 written by python")
    }

    @Test func damagedDiffsAndDiffsForAnotherBaseAreRefusedAndChangeNothing() throws {
        let (workspace, _) = try Self.changedStore()
        try workspace.succeed("export-diff", "disk.cow", "disk.diff")
        try workspace.succeed("export-diff", "disk.cow", "disk.rbd", "--format", "rbd")
        let diff = [UInt8](workspace.contents("disk.diff") ?? Data())
        let rbd = [UInt8](workspace.contents("disk.rbd") ?? Data())
        try workspace.copy("base.img", to: "raw.img")
        let base = workspace.contents("base.img")
        func flipped(_ byteOffset: Int) -> [UInt8] {
            var bytes = diff
            bytes[byteOffset] ^= 0xff
            return bytes
        }
        let damaged: [(name: String, bytes: [UInt8], force: Bool)] = [
            ("header.diff", flipped(20), false), ("data.diff", flipped(200), false),
            ("trailer.diff", flipped(diff.count - 3), false),
            ("cut.diff", Array(diff.dropLast(32)), false),
            ("half.diff", Array(diff.prefix(diff.count / 2)), false),
            ("cut.rbd", Array(rbd.dropLast()), true),
        ]
        for (name, bytes, force) in damaged {
            try Data(bytes).write(to: workspace.folder.appendingPathComponent(name))
            let result = try workspace.cowbd(
                ["import-diff", name, "raw.img"] + (force ? ["--force"] : []))
            expectOneLineError(result)
            #expect(workspace.contents("raw.img") == base, "\(name) changed the target")
        }
        let pipe = try workspace.shell("cat half.diff | \"$COWBD\" import-diff - raw.img")
        #expect(pipe.status != 0, "a truncated diff on a pipe was applied")
        #expect(workspace.contents("raw.img") == base, "a truncated diff on a pipe wrote")

        try workspace.writeRandomFile("other-base.img", byteCount: Self.baseByteCount, seed: 7)
        let otherBase = workspace.contents("other-base.img")
        let mismatch = try workspace.cowbd("import-diff", "disk.diff", "other-base.img")
        expectOneLineError(mismatch)
        #expect(mismatch.standardError.contains("fingerprint"), "\(mismatch.standardError)")
        #expect(workspace.contents("other-base.img") == otherBase)
        try workspace.succeed("create", "third.cow", "--base", "other-base.img", "--size", "64M")
        expectOneLineError(try workspace.cowbd("import-diff", "disk.diff", "third.cow"))
    }

    @Test func theDiffOfOneChangedChunkIsSmall() throws {
        let workspace = try Self.workspaceWithBase()
        try workspace.succeed("create", "small.cow", "--base", "base.img")
        _ = try Self.changing(workspace, "small.cow") {
            try $0.pwrite([UInt8](repeating: 0x42, count: 4096), at: 12288)
        }
        try workspace.succeed("export-diff", "small.cow", "small.diff")
        let byteCount = workspace.contents("small.diff")?.count ?? .max
        #expect(byteCount < 2 * 4096 + 256, "the diff of one 4 KiB chunk is \(byteCount) bytes")
    }

    /// Kills `import-diff DIFF TARGET` at random instants; the rerun (without --force) finishes
    /// it, a store target passes check in between, and no import record is left. Killed after
    /// the import had finished (record gone, TARGET complete), there is nothing to rerun: a raw
    /// target is no longer the diff's base.
    static func killImports(
        _ workspace: Workspace, diff: String, target: String, expected: [UInt8],
        prepare: () throws -> Void
    ) throws {
        try prepare()
        let fullMilliseconds = try workspace.millisecondsToSucceed("import-diff", diff, target)
        #expect(try holds(workspace, target, expected), "an uninterrupted \(diff) onto \(target)")
        var generator = SplitMix64(seed: seed &+ UInt64(target.count))
        let record = ".\(target).cowbd-import"
        for trial in 0..<trialCount {
            try prepare()
            let delay = Int(generator.next() % UInt64(max(1, fullMilliseconds * 3 / 2)))
            let comment = "seed \(seed), \(diff) onto \(target) killed after \(delay) ms (\(trial))"
            try workspace.cowbdKilled(afterMilliseconds: delay, ["import-diff", diff, target])
            if target.hasSuffix(".cow") {
                let check = try workspace.cowbd("check", target)
                #expect(check.status == 0, "\(comment): check: \(check.standardOutput)")
            }
            if try workspace.exists(record) || !holds(workspace, target, expected) {
                let rerun = try workspace.cowbd("import-diff", diff, target)
                #expect(rerun.status == 0, "\(comment): rerun: \(rerun.standardError)")
            }
            #expect(!workspace.exists(record), "\(comment): import record left")
            #expect(try holds(workspace, target, expected), "\(comment): target")
        }
    }

    @Test(arguments: ["raw", "cow"])
    func aKilledImportIsFinishedByARerun(kind: String) throws {
        let (workspace, expected) = try Self.changedStore()
        try workspace.succeed("export-diff", "disk.cow", "disk.diff")
        let target = kind == "raw" ? "raw.img" : "killed.cow"
        try Self.killImports(workspace, diff: "disk.diff", target: target, expected: expected) {
            try Self.makeTarget(workspace, target, holding: "base.img", diffs: [])
        }
    }

    /// A store with a checkpoint over an image of its disk then (big-a.img), the scattered
    /// changes since, and an incremental import killed and rerun without --force onto that image
    /// (raw) or onto a store holding it: once partly applied, the target's fingerprint is no
    /// longer the checkpoint's; the import record lets the rerun on.
    @Test(arguments: ["raw", "cow"])
    func aKilledIncrementalImportIsFinishedByARerun(kind: String) throws {
        let workspace = try Self.workspaceWithBase()
        try workspace.succeed("create", "big.cow", "--base", "base.img", "--size", "64M")
        _ = try Self.changing(workspace, "big.cow") {
            try $0.pwrite([UInt8](repeating: 0x31, count: 3 << 20), at: 1 << 20)
        }
        try workspace.succeed("export-diff", "big.cow", "big-a.diff")
        try workspace.copy("base.img", to: "big-a.img")
        try workspace.succeed("import-diff", "big-a.diff", "big-a.img")
        try workspace.succeed("checkpoint", "big.cow", "start")
        let expected = try Self.changing(workspace, "big.cow") {
            try Self.scatteredChanges($0, seed: Self.seed)
        }
        try workspace.succeed("export-diff", "big.cow", "big-b.diff", "--since", "start")
        let target = kind == "raw" ? "big-raw.img" : "big-killed.cow"
        try Self.killImports(workspace, diff: "big-b.diff", target: target, expected: expected) {
            try Self.makeTarget(workspace, target, holding: "big-a.img", diffs: ["big-a.diff"])
        }
    }

    /// Makes TARGET afresh: a copy of `image` if it is raw, else a 64 MiB store over base.img
    /// with `diffs` imported (which must give `image`'s disk).
    static func makeTarget(
        _ workspace: Workspace, _ target: String, holding image: String, diffs: [String]
    ) throws {
        guard target.hasSuffix(".cow") else { return try workspace.copy(image, to: target) }
        try? FileManager.default.removeItem(atPath: workspace.path(target))
        try workspace.succeed("create", target, "--base", "base.img", "--size", "64M")
        for diff in diffs { try workspace.succeed("import-diff", diff, target) }
    }
}
