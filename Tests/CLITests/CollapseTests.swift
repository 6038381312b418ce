// Shortening a chain through the built binary: `collapse` and `merge --in-place` into a lower
// store, each killed with SIGKILL at random instants and run again, must leave vm.cow serving
// the disk of an in-memory model (written through libnbd at every level), passing `check`,
// and every layer they must not write byte for byte as it was. Bad input is refused with one
// line naming the layer, changing no file. COWBD_COLLAPSE_SEED picks the seed.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd collapse and merge into a lower store, whole and killed") struct CollapseTests {
    static let diskByteCount = 24 << 20
    static let trialCount = 6
    static let seed = seedFromEnvironment("COWBD_COLLAPSE_SEED")

    /// base.img <- s1.cow <- s2.cow <- s3.cow <- vm.cow (s1 to s3 frozen by snapshot), each
    /// level with its own writes, and pristine copies of every file.
    struct Fixture {
        let workspace: Workspace
        let expected: [UInt8]
        static let files = ["base.img", "s1.cow", "s2.cow", "s3.cow", "vm.cow"]

        init(seed: UInt64) throws {
            workspace = try Workspace()
            try workspace.writeRandomFile("base.img", byteCount: diskByteCount, seed: seed)
            try workspace.succeed("create", "vm.cow", "--base", "base.img")
            var model = try [UInt8](
                Data(contentsOf: URL(fileURLWithPath: workspace.path("base.img"))))
            var generator = SplitMix64(seed: seed ^ 0x636f_6c6c)
            for level in 1...4 {
                let server = ServedStore(
                    store: workspace.path("vm.cow"), socket: workspace.path("s.sock"),
                    extraArguments: ["--log-level", "error"])
                try server.start()
                let connection = try server.connect()
                let runOffset = Int(generator.next() % UInt64(diskByteCount - (4 << 20)))
                let run = CrashTests.randomBytes(3 << 20, &generator)
                try connection.pwrite(run, at: UInt64(runOffset))
                model.replaceSubrange(runOffset..<(runOffset + run.count), with: run)
                for index in 0..<60 {
                    let offset = Int(generator.next() % UInt64(diskByteCount - 65536))
                    let pattern = [UInt8](
                        repeating: UInt8((level * 60 + index) % 251 + 1), count: 65536)
                    try connection.pwrite(pattern, at: UInt64(offset))
                    model.replaceSubrange(offset..<(offset + 65536), with: pattern)
                }
                let zeroOffset = Int(generator.next() % UInt64(diskByteCount - (1 << 20)))
                try connection.zero(at: UInt64(zeroOffset), byteCount: 1 << 20)
                model.replaceSubrange(
                    zeroOffset..<(zeroOffset + (1 << 20)), with: repeatElement(0, count: 1 << 20))
                try connection.flush()
                #expect(try connection.allBytes() == model, "level \(level): not the model")
                try connection.shutdown()
                try server.stop()
                if level < 4 { try workspace.succeed("snapshot", "vm.cow", "s\(level).cow") }
            }
            expected = model
            for file in Self.files { try workspace.copy(file, to: "pristine-\(file)") }
        }

        /// Puts every file back as it was, and removes what a collapse made.
        func reset() throws {
            for file in Self.files { try workspace.copy("pristine-\(file)", to: file) }
            for name in try workspace.entries(where: { $0.contains("folded") }) {
                try FileManager.default.removeItem(atPath: workspace.path(name))
            }
        }

        /// Requires `names` to be byte for byte as they were.
        func expectUnchanged(_ names: [String], _ comment: String) {
            for name in names {
                #expect(
                    workspace.contents(name) == workspace.contents("pristine-\(name)"),
                    "\(comment): \(name) changed")
            }
        }

        /// vm.cow passes `check` and serves the model's disk.
        func expectTheStoreServesTheDisk(_ comment: String) throws {
            let check = try workspace.cowbd("check", "vm.cow")
            #expect(check.status == 0, "\(comment): check: \(check.standardOutput)")
            #expect(try workspace.servedDisk("vm.cow") == expected, "\(comment): served disk")
        }

        /// Runs `trialCount` trials of `arguments`: puts the files back, kills the command at a
        /// random instant in the later half of the time an uninterrupted run takes, reruns it (which must
        /// succeed), then calls `check` with a comment naming the trial.
        func killAndRerun(
            _ arguments: [String], seed: UInt64, _ check: (_ comment: String) throws -> Void
        ) throws {
            try reset()
            let start = DispatchTime.now().uptimeNanoseconds
            let full = try workspace.cowbd(arguments)
            #expect(full.status == 0, "\(arguments): \(full.standardError)")
            let fullMilliseconds = Int((DispatchTime.now().uptimeNanoseconds - start) / 1_000_000)
            var generator = SplitMix64(seed: seed)
            var killedCount = 0
            // What the kills left and how the reruns found the work.
            var outcomes: [String: Int] = [:]
            for trial in 0..<CollapseTests.trialCount {
                try reset()
                // In the later half: the first is mostly the process starting and opening the
                // chain, before anything is written.
                let delay =
                    fullMilliseconds / 2
                    + Int(
                        generator.next() % UInt64(max(1, fullMilliseconds - fullMilliseconds / 2)))
                let comment = "seed \(seed), \(arguments) killed after \(delay) ms, trial \(trial)"
                if try workspace.cowbdKilled(afterMilliseconds: delay, arguments) {
                    killedCount += 1
                }
                if try !workspace.entries(where: { $0.hasSuffix(".cowbd-fold") }).isEmpty {
                    outcomes["temporary left", default: 0] += 1
                }
                let rerun = try workspace.cowbd(arguments)
                #expect(rerun.status == 0, "\(comment): rerun: \(rerun.standardError)")
                for word in ["interrupted", "already"] where rerun.standardOutput.contains(word) {
                    outcomes[word, default: 0] += 1
                }
                try check(comment)
            }
            print(
                "\(arguments): \(killedCount) of \(CollapseTests.trialCount) runs killed; reruns: "
                    + "\(outcomes)")
        }
    }

    @Test func aKilledCollapseIsFinishedByARerun() throws {
        let fixture = try Fixture(seed: Self.seed)
        try fixture.killAndRerun(
            ["collapse", "vm.cow", "--depth", "2", "--into", "folded.cow"], seed: Self.seed &+ 1
        ) { comment in
            fixture.expectUnchanged(["base.img", "s1.cow", "s2.cow", "s3.cow"], comment)
            #expect(!fixture.workspace.exists(".folded.cow.cowbd-fold"), "\(comment): temporary")
            let info = try fixture.workspace.json("info", "--json", "vm.cow")
            let chain = try #require(info["chain"] as? [[String: Any]])
            #expect(
                chain.compactMap { ($0["path"] as? String)?.split(separator: "/").last }
                    == ["vm.cow", "folded.cow", "s1.cow", "base.img"], "\(comment): chain")
            try fixture.expectTheStoreServesTheDisk(comment)
        }
    }

    @Test func aKilledMergeIntoTheLowerStoreIsFinishedByARerun() throws {
        let fixture = try Fixture(seed: Self.seed &+ 2)
        try fixture.killAndRerun(["merge", "vm.cow", "--in-place"], seed: Self.seed &+ 3) {
            comment in
            fixture.expectUnchanged(["base.img", "s1.cow", "s2.cow"], comment)
            let info = try fixture.workspace.json("info", "--json", "vm.cow")
            let chain = try #require(info["chain"] as? [[String: Any]])
            #expect(chain.first?["chunks_written"] as? Int == 0, "\(comment): vm.cow not empty")
            #expect(chain.dropFirst().first?["frozen"] as? Bool == true, "\(comment): s3 frozen")
            try fixture.expectTheStoreServesTheDisk(comment)
        }
    }

    @Test func badCollapsesAreRefusedWithOneLineAndChangeNothing() throws {
        let fixture = try Fixture(seed: Self.seed &+ 4)
        let workspace = fixture.workspace
        try workspace.succeed("create", "raw-top.cow", "--base", "base.img")
        let cases: [(arguments: [String], names: String)] = [
            (["collapse", "vm.cow", "--depth", "4"], "vm.cow"),
            (["collapse", "raw-top.cow", "--depth", "2"], "raw-top.cow"),
            (["collapse", "vm.cow", "--depth", "2", "--into", "s1.cow"], "s1.cow"),
            (["collapse", "vm.cow", "--depth", "2", "--into", "base.img"], "base.img"),
        ]
        for (arguments, name) in cases {
            let result = try workspace.cowbd(arguments)
            expectOneLineError(result)
            #expect(result.standardError.contains(name), "\(arguments): \(result.standardError)")
            fixture.expectUnchanged(Fixture.files, "\(arguments)")
        }
        // Served read-only, the store is refused before anything is built (served writable,
        // its server collapses it: LiveCollapseTests).
        let server = ServedStore(
            store: workspace.path("vm.cow"), socket: workspace.path("s.sock"),
            extraArguments: ["--log-level", "error", "--read-only"])
        try server.start()
        let served = try workspace.cowbd("collapse", "vm.cow", "--depth", "2")
        try server.stop()
        expectOneLineError(served)
        #expect(served.standardError.contains("vm.cow"), "\(served.standardError)")
        #expect(try workspace.entries(where: { $0.contains("+") }).isEmpty, "a layer was made")
        fixture.expectUnchanged(Fixture.files, "served")
    }
}
