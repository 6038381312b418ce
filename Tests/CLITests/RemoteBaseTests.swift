// A base on an NBD server, through the built binary: `cowbd serve --read-only` of a store over
// a raw image is the remote base of a second store, whose disk must read as the image byte for
// byte (libnbd is the judge). The base server is killed and restarted mid-read (the read waits
// and resumes, no wrong byte), replaced by another image (refused, loudly), or gone for longer
// than --base-timeout (EIO); chunks the store holds keep reading meanwhile.

import Foundation
import NBDClient
import Synchronization
import TestSupport
import Testing

@Suite("Remote bases") struct RemoteBaseTests {
    static let goldenByteCount = 8 << 20
    static let pieceByteCount = 256 << 10

    /// golden.img (random, with a zero MiB in the middle for block status to report), a store
    /// over it served read-only as the base, and vm.cow made over that server's URI.
    final class Fixture {
        let workspace: Workspace
        let golden: [UInt8]
        let base: ServedStore
        let uri: String

        init(seed: UInt64 = 15) throws {
            workspace = try Workspace()
            var generator = SplitMix64(seed: seed)
            var bytes = [UInt8](repeating: 0, count: RemoteBaseTests.goldenByteCount)
            bytes.withUnsafeMutableBytes { buffer in
                for wordIndex in 0..<(buffer.count / 8) {
                    buffer.storeBytes(
                        of: generator.next(), toByteOffset: wordIndex * 8, as: UInt64.self)
                }
            }
            bytes.replaceSubrange((3 << 20)..<(4 << 20), with: repeatElement(0, count: 1 << 20))
            golden = bytes
            try Data(bytes).write(to: workspace.folder.appendingPathComponent("golden.img"))
            try workspace.succeed("create", "golden.cow", "--base", "golden.img")
            base = ServedStore(
                store: workspace.path("golden.cow"), socket: workspace.path("base.sock"),
                extraArguments: ["--read-only"])
            try base.start()
            uri = "nbd+unix:///?socket=\(workspace.path("base.sock"))"
            try workspace.succeed("create", "vm.cow", "--base", uri)
        }

        /// `cowbd serve vm.cow` with `arguments` (--base-timeout, --base-cache-size...).
        func serveDisk(_ arguments: [String]) throws -> ServedStore {
            let disk = ServedStore(
                store: workspace.path("vm.cow"), socket: workspace.path("vm.sock"),
                extraArguments: arguments)
            try disk.start()
            return disk
        }

        /// The export of `disk`, read in `pieceByteCount` requests.
        func readAll(_ disk: ServedStore) throws -> [UInt8] {
            let connection = try disk.connect()
            var bytes: [UInt8] = []
            for byteOffset in stride(from: 0, to: goldenByteCount, by: pieceByteCount) {
                bytes += try connection.pread(at: UInt64(byteOffset), byteCount: pieceByteCount)
            }
            return bytes
        }
    }

    @Test func infoShowsTheURIAndKindNBD() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let info = try fixture.workspace.json("info", "vm.cow", "--json")
        #expect(info["base_kind"] as? String == "nbd")
        #expect(info["base"] as? String == fixture.uri)
        #expect(info["base_given"] as? String == fixture.uri)
        #expect(info["base_resolved"] as? String == fixture.uri)
        #expect(info["fingerprint_status"] as? String == "ok")
        let text = try fixture.workspace.succeed("info", "vm.cow")
        #expect(text.contains("base kind:          nbd"), "\(text)")
        #expect(text.contains("base:               \(fixture.uri)"), "\(text)")
    }

    @Test func diskOverARemoteBaseReadsAsTheImageByteForByte() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk([])
        defer { disk.kill() }
        #expect(try fixture.readAll(disk) == fixture.golden, "cold")
        #expect(try fixture.readAll(disk) == fixture.golden, "warm")
        // Odd ranges across page and chunk edges, and a write the store keeps.
        let connection = try disk.connect()
        var generator = SplitMix64(seed: 7)
        for _ in 0..<200 {
            let byteOffset = Int(generator.next() % UInt64(Self.goldenByteCount - 70_000))
            let byteCount = 1 + Int(generator.next() % 70_000)
            let bytes = try connection.pread(at: UInt64(byteOffset), byteCount: byteCount)
            #expect(
                bytes == Array(fixture.golden[byteOffset..<(byteOffset + byteCount)]),
                "\(byteCount) bytes at \(byteOffset)")
        }
        let written = [UInt8](repeating: 0xA5, count: 5000)
        try connection.pwrite(written, at: 12_345)
        var expected = fixture.golden
        expected.replaceSubrange(12_345..<(12_345 + 5000), with: written)
        #expect(try fixture.readAll(disk) == expected)
        try disk.stop()
    }

    @Test func baseServerKilledAndRestartedMidReadResumesWithNoWrongByte() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        // No cache: every read goes to the network, so the outage hits reads in flight.
        let disk = try fixture.serveDisk(["--base-cache-size", "0", "--base-timeout", "30"])
        defer { disk.kill() }
        // The reader reads the whole disk over and over until told to stop after the base is
        // back: some of its reads are on the wire when the base dies.
        let outcome = Mutex<(passCount: Int, wrongPassCount: Int, error: String?)?>(nil)
        let stopRequested = Atomic<Bool>(false)
        let diskSocket = disk.socketPath
        let golden = fixture.golden
        let reader = Thread {
            var passCount = 0
            var wrongPassCount = 0
            do {
                let connection = try NBDConnection()
                try connection.connect(unixSocketPath: diskSocket)
                repeat {
                    var bytes: [UInt8] = []
                    for byteOffset in stride(
                        from: 0, to: RemoteBaseTests.goldenByteCount,
                        by: RemoteBaseTests.pieceByteCount)
                    {
                        bytes += try connection.pread(
                            at: UInt64(byteOffset), byteCount: RemoteBaseTests.pieceByteCount)
                    }
                    passCount += 1
                    if bytes != golden { wrongPassCount += 1 }
                } while !stopRequested.load(ordering: .relaxed) && passCount < 10_000
                outcome.withLock { $0 = (passCount, wrongPassCount, nil) }
            } catch {
                outcome.withLock { $0 = (passCount, wrongPassCount, "\(error)") }
            }
        }
        reader.start()
        Thread.sleep(forTimeInterval: 0.3)
        fixture.base.kill()
        Thread.sleep(forTimeInterval: 1.5)
        try fixture.base.start()
        Thread.sleep(forTimeInterval: 0.5)
        stopRequested.store(true, ordering: .relaxed)
        #expect(waitUntil(seconds: 60) { outcome.withLock { $0 != nil } })
        let result = try #require(outcome.withLock { $0 })
        #expect(result.error == nil, "a read failed: \(result.error ?? "")")
        #expect(result.wrongPassCount == 0, "\(result.wrongPassCount) of \(result.passCount)")
        #expect(result.passCount >= 2)
        #expect(
            (try? String(contentsOfFile: disk.logPath, encoding: .utf8))?
                .contains("network base reconnected") == true, "\(disk.logTail())")
        try disk.stop()
    }

    @Test func baseThatComesBackWithOtherContentIsRefused() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk(["--base-cache-size", "0", "--base-timeout", "30"])
        defer { disk.kill() }
        #expect(try fixture.readAll(disk) == fixture.golden)
        // Same size, one byte different inside a fingerprint sample (the first 64 KiB).
        fixture.base.kill()
        var other = fixture.golden
        other[100] ^= 0xFF
        try Data(other).write(to: fixture.workspace.folder.appendingPathComponent("other.img"))
        try fixture.workspace.succeed("create", "other.cow", "--base", "other.img")
        let impostor = ServedStore(
            store: fixture.workspace.path("other.cow"),
            socket: fixture.workspace.path("base.sock"), extraArguments: ["--read-only"])
        try impostor.start()
        defer { impostor.kill() }
        let connection = try disk.connect()
        for byteOffset in [0, 5 << 20] {
            #expect(throws: NBDClientError.self) {
                _ = try connection.pread(at: UInt64(byteOffset), byteCount: 4096)
            }
        }
        let log = (try? String(contentsOfFile: disk.logPath, encoding: .utf8)) ?? ""
        #expect(log.contains("error") && log.contains("network base refused"), "\(log.suffix(800))")
        let info = try fixture.workspace.json("info", "vm.cow", "--json")
        #expect((info["fingerprint_status"] as? String)?.hasPrefix("changed") == true)
    }

    @Test func unreachableBaseFailsReadsWithEIOAfterTheTimeoutButHeldChunksStillRead() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk(["--base-cache-size", "0", "--base-timeout", "2"])
        defer { disk.kill() }
        let connection = try disk.connect()
        let written = [UInt8](repeating: 0x5A, count: 64 << 10)
        try connection.pwrite(written, at: 0)
        fixture.base.kill()
        let started = ContinuousClock.now
        do {
            _ = try connection.pread(at: 6 << 20, byteCount: 4096)
            Issue.record("a read of base data succeeded with the base gone")
        } catch let error as NBDClientError {
            #expect(error.errno == EIO, "\(error)")
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(1900) && waited < .seconds(20), "\(waited)")
        // The store's own chunks do not wait for the base.
        let heldStart = ContinuousClock.now
        #expect(try connection.pread(at: 0, byteCount: written.count) == written)
        #expect(ContinuousClock.now - heldStart < .seconds(1))
        // Back within the timeout, reads resume.
        try fixture.base.start()
        #expect(
            try connection.pread(at: 6 << 20, byteCount: 4096)
                == Array(fixture.golden[(6 << 20)..<((6 << 20) + 4096)]))
        try disk.stop()
    }

    /// With the base cache on, a read that misses is fetched before a thread takes it, and
    /// nobody waits on the fetch: the timeout must still fail it, whether the base stopped
    /// answering on a live connection (SIGSTOP) or went away (SIGKILL).
    @Test(arguments: [SIGSTOP, SIGKILL])
    func aReadFetchedAheadOfItsThreadFailsWithEIOAtTheTimeout(signal: Int32) throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk(["--base-timeout", "2"])
        defer { disk.kill() }
        let connection = try disk.connect()
        let baseProcess = fixture.base.processIdentifier
        kill(baseProcess, signal)
        defer { if signal == SIGSTOP { kill(baseProcess, SIGCONT) } }
        let started = ContinuousClock.now
        do {
            _ = try connection.pread(at: 6 << 20, byteCount: 4096)
            Issue.record("a read of base data succeeded with the base stuck")
        } catch let error as NBDClientError {
            #expect(error.errno == EIO, "\(error)")
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(1900) && waited < .seconds(20), "\(waited)")
        if signal == SIGSTOP {
            kill(baseProcess, SIGCONT)
        } else {
            fixture.base.reap()
            try fixture.base.start()
        }
        #expect(
            try connection.pread(at: 6 << 20, byteCount: 4096)
                == Array(fixture.golden[(6 << 20)..<((6 << 20) + 4096)]))
        try disk.stop()
    }
}
