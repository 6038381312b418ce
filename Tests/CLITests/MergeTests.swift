// `cowbd merge` through the built binary: a store over a grown base with a long run, scattered
// writes, zeroes and a trim, written through libnbd beside an in-memory model of the disk. A merge
// is refused while the store is served; `--into` a copy of the base, `--in-place` and
// `--output --compress` give the disk (compared with the model); and a merge killed with SIGKILL
// at a random instant is finished by a rerun, or taken back with `--abort`, leaving a store that
// passes `check` and serves the same disk. COWBD_MERGE_SEED picks the seed.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd merge, whole and killed") struct MergeTests {
    static let baseByteCount = 64 << 20
    static let diskByteCount = 72 << 20
    static let trialCount = 6
    static let seed = seedFromEnvironment("COWBD_MERGE_SEED")

    /// A workspace holding base.img (its first half random, the rest a hole), disk.cow over it
    /// grown to `diskByteCount` with the changes written, pristine copies of both, and the disk
    /// as served (checked against the model). A merge is refused while the store is served.
    struct Fixture {
        let workspace: Workspace
        let expected: [UInt8]

        init(seed: UInt64) throws {
            workspace = try Workspace()
            try workspace.writeRandomFile("base.img", byteCount: baseByteCount / 2, seed: seed)
            try FileHandle(forWritingTo: URL(fileURLWithPath: workspace.path("base.img")))
                .truncate(atOffset: UInt64(baseByteCount))
            try workspace.succeed("create", "disk.cow", "--base", "base.img", "--size", "72M")
            var model = try [UInt8](
                Data(contentsOf: URL(fileURLWithPath: workspace.path("base.img"))))
            model += [UInt8](repeating: 0, count: diskByteCount - baseByteCount)

            let server = ServedStore(
                store: workspace.path("disk.cow"), socket: workspace.path("s.sock"),
                extraArguments: ["--log-level", "error"])
            try server.start()
            let connection = try server.connect()
            var generator = SplitMix64(seed: seed ^ 0x6d65_7267_65)
            func write(_ bytes: [UInt8], at byteOffset: Int) throws {
                try connection.pwrite(bytes, at: UInt64(byteOffset))
                model.replaceSubrange(byteOffset..<(byteOffset + bytes.count), with: bytes)
            }
            try write([0x5c], at: 0)
            try write(CrashTests.randomBytes(16 << 20, &generator), at: 1 << 20)
            for index in 0..<200 {
                let pattern = [UInt8](repeating: UInt8(index % 250 + 1), count: 65536)
                try write(pattern, at: index * 1_310_719 % 75_000_000)
            }
            try connection.zero(at: 25_000_000, byteCount: 2_000_000)
            model.replaceSubrange(
                25_000_000..<27_000_000, with: repeatElement(0, count: 2_000_000))
            // A trim may read as zeros or as before: the model takes what the server reads.
            try connection.trim(at: 36 << 20, byteCount: 4 << 20)
            let trimmed = try connection.pread(at: 36 << 20, byteCount: 4 << 20)
            model.replaceSubrange((36 << 20)..<(40 << 20), with: trimmed)
            try connection.flush()
            #expect(try connection.allBytes() == model, "the served disk is not the model")

            let refused = try workspace.cowbd("merge", "disk.cow", "--output", "refused.img")
            expectOneLineError(refused)
            #expect(refused.standardError.contains("in use"), "\(refused.standardError)")
            #expect(!workspace.exists("refused.img"))
            try connection.shutdown()
            try server.stop()
            expected = model
            try workspace.copy("disk.cow", to: "pristine.cow")
            try workspace.copy("base.img", to: "pristine-base.img")
        }

        /// Puts disk.cow, base.img and target.img back as they were before any merge.
        func reset() throws {
            try workspace.copy("pristine.cow", to: "disk.cow")
            try workspace.copy("pristine-base.img", to: "base.img")
            try workspace.copy("pristine-base.img", to: "target.img")
        }

        /// The merge arguments of a mode, and the file it writes.
        static func arguments(_ mode: String) -> (arguments: [String], target: String) {
            mode == "into"
                ? (["merge", "disk.cow", "--into", "target.img"], "target.img")
                : (["merge", "disk.cow", "--in-place"], "base.img")
        }

        /// Whether `name` holds exactly the disk.
        func holdsTheDisk(_ name: String) -> Bool {
            workspace.contents(name) == Data(expected)
        }

        /// disk.cow passes `check` and serves the disk.
        func expectTheStoreServesTheDisk(_ comment: String) throws {
            let check = try workspace.cowbd("check", "disk.cow")
            #expect(check.status == 0, "\(comment): check: \(check.standardOutput)")
            #expect(try workspace.servedDisk("disk.cow") == expected, "\(comment): served disk")
        }

        /// Runs `trialCount` trials of merge in `mode`: puts the files back, kills the merge at a
        /// random instant within the time an uninterrupted merge takes, then calls `after` with
        /// a comment naming the trial and whether the kill came before the merge had finished.
        func killMerges(
            mode: String, seed: UInt64,
            _ after: (_ comment: String, _ wasKilled: Bool) throws -> Void
        ) throws {
            try reset()
            let fullMilliseconds = try workspace.millisecondsToSucceed(
                "merge", "disk.cow", "--into", "target.img")
            var generator = SplitMix64(seed: seed)
            for trial in 0..<MergeTests.trialCount {
                try reset()
                let delay = Int(generator.next() % UInt64(max(1, fullMilliseconds)))
                let wasKilled = try workspace.cowbdKilled(
                    afterMilliseconds: delay, Self.arguments(mode).arguments)
                try after(
                    "seed \(seed), merge --\(mode) killed after \(delay) ms, trial \(trial)",
                    wasKilled)
            }
        }

        /// Requires base.img to be as it was: `--into` never writes the base.
        func expectTheBaseUnchanged(_ comment: String) {
            #expect(
                workspace.contents("base.img") == workspace.contents("pristine-base.img"),
                "\(comment): --into wrote the base")
        }
    }

    @Test func wholeMergesGiveTheDisk() throws {
        let fixture = try Fixture(seed: Self.seed)
        let workspace = fixture.workspace
        try fixture.reset()
        try workspace.succeed("merge", "disk.cow", "--into", "target.img")
        #expect(fixture.holdsTheDisk("target.img"), "merge --into, seed \(Self.seed)")
        fixture.expectTheBaseUnchanged("merge --into")

        try fixture.reset()
        try workspace.succeed("merge", "disk.cow", "--output", "flat.lz4", "--compress")
        try workspace.succeed("create", "over-flat.cow", "--base", "flat.lz4")
        #expect(
            try workspace.servedDisk("over-flat.cow") == fixture.expected,
            "merge --output --compress, seed \(Self.seed)")

        try fixture.reset()
        try workspace.succeed("merge", "disk.cow", "--in-place")
        #expect(fixture.holdsTheDisk("base.img"), "merge --in-place, seed \(Self.seed)")
        try fixture.expectTheStoreServesTheDisk("after merge --in-place")
    }

    @Test(arguments: ["into", "in-place"])
    func aKilledMergeIsFinishedByARerun(mode: String) throws {
        let fixture = try Fixture(seed: Self.seed)
        let (arguments, target) = Fixture.arguments(mode)
        var resumedCount = 0
        try fixture.killMerges(mode: mode, seed: Self.seed &+ (mode == "into" ? 1 : 2)) {
            comment, wasKilled in
            // A merge that finished before the kill (or just as it came) has nothing left to do:
            // after `--into` the target is the store's base, and a rerun says it is done.
            if wasKilled {
                let rerun = try fixture.workspace.cowbd(arguments)
                #expect(rerun.status == 0, "\(comment): rerun: \(rerun.standardError)")
                if rerun.standardOutput.contains("interrupted") { resumedCount += 1 }
            }
            #expect(fixture.holdsTheDisk(target), "\(comment): \(target)")
            if mode == "into" { fixture.expectTheBaseUnchanged(comment) }
            try fixture.expectTheStoreServesTheDisk(comment)
        }
        print("merge --\(mode): \(resumedCount) of \(Self.trialCount) reruns finished a merge")
    }

    /// Taken back with `--abort --force`, the store serves the same disk and `--into` never
    /// wrote the base; where the merge had already emptied the store (or finished), `--abort`
    /// is refused and a rerun finishes the merge instead.
    @Test(arguments: ["into", "in-place"])
    func aKilledMergeIsTakenBackByAbort(mode: String) throws {
        let fixture = try Fixture(seed: Self.seed)
        let (arguments, target) = Fixture.arguments(mode)
        var abortedCount = 0
        try fixture.killMerges(mode: mode, seed: Self.seed &+ (mode == "into" ? 3 : 4)) {
            comment, _ in
            let abort = try fixture.workspace.cowbd("merge", "disk.cow", "--abort", "--force")
            if abort.status == 0 {
                abortedCount += 1
                if mode == "into" { fixture.expectTheBaseUnchanged(comment) }
            } else {
                #expect(
                    abort.standardError.contains("nothing to abort")
                        || abort.standardError.contains("cannot be taken back"),
                    "\(comment): --abort: \(abort.standardError)")
                let rerun = try fixture.workspace.cowbd(arguments)
                #expect(rerun.status == 0 || fixture.holdsTheDisk(target), "\(comment): rerun")
                #expect(fixture.holdsTheDisk(target), "\(comment): \(target)")
            }
            try fixture.expectTheStoreServesTheDisk(comment)
        }
        print(
            "merge --\(mode): \(abortedCount) of \(Self.trialCount) kills taken back with --abort")
    }
}
