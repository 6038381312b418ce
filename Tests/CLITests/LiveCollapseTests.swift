// Live collapse of the frozen layers under a served store (docs/CONTROL.md): under a libnbd
// load of writers that read back what they wrote, the disk stays the model of acknowledged
// writes before, during and after the collapse, and no request fails; a server killed in the
// middle of a throttled collapse restarts, the command run again finishes it, and check is
// clean; progress shows in live info; a second collapse and a live merge are refused.

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `disk.cow` over `l3.cow` over `l2.cow` over `l1.cow` over `base.img`, each layer frozen by
/// `cowbd snapshot` after writes that overlap the layer under it (some as zeroes), and the
/// model of the disk they make.
private final class LayeredDisk {
    static let diskByteCount = 16 << 20
    static let chunkByteCount = 4096
    let workspace: Workspace
    var model: [UInt8]

    init(layerCount: Int = 3) throws {
        workspace = try Workspace()
        try workspace.writeRandomFile("base.img", byteCount: Self.diskByteCount, seed: 7)
        model = [UInt8](workspace.contents("base.img") ?? Data())
        try workspace.succeed("create", "disk.cow", "--base", "base.img")
        for layer in 1...layerCount {
            let server = ServedStore(
                store: workspace.path("disk.cow"), socket: workspace.path("build.sock"),
                extraArguments: ["--log-level", "warning"])
            try server.start()
            let connection = try server.connect()
            var generator = SplitMix64(seed: UInt64(layer))
            // 64 KiB runs every 192 KiB, shifted by 32 KiB a layer: each overlaps the last.
            for run in stride(
                from: layer * 32 << 10, to: Self.diskByteCount - (64 << 10), by: 192 << 10)
            {
                if (run / (192 << 10)) % 5 == layer {
                    try connection.zero(at: UInt64(run), byteCount: 64 << 10)
                    model.replaceSubrange(
                        run..<(run + (64 << 10)), with: [UInt8](repeating: 0, count: 64 << 10))
                } else {
                    let bytes = (0..<(64 << 10)).map { _ in
                        UInt8(truncatingIfNeeded: generator.next())
                    }
                    try connection.pwrite(bytes, at: UInt64(run))
                    model.replaceSubrange(run..<(run + bytes.count), with: bytes)
                }
            }
            try connection.flush()
            try server.stop()
            try workspace.succeed("snapshot", "disk.cow", "l\(layer).cow")
        }
    }
}

/// Writers on connections of their own, each owning the 8 KiB pairs `w, w+W, ...`: each
/// overwrites random pairs of its own and reads back a random pair of its own after every
/// write, which must hold its last write there or, never written, the layers' bytes.
private final class ReadBackLoad: @unchecked Sendable {
    static let pairByteCount = 8192
    let writerCount: Int
    let initial: [UInt8]
    private let lock = NSLock()
    private var lastWrite: [Int: [UInt8]] = [:]
    private var latencies: [(issued: Double, acknowledged: Double)] = []
    private var failures: [String] = []
    private var readCount = 0
    private var stopping = false
    private let finished = DispatchGroup()

    init(writerCount: Int, initial: [UInt8]) {
        self.writerCount = writerCount
        self.initial = initial
    }

    func start(_ connect: @escaping @Sendable () throws -> NBDConnection) {
        let pairCount = initial.count / Self.pairByteCount
        for writer in 0..<writerCount {
            finished.enter()
            Thread.detachNewThread { [self] in
                defer { finished.leave() }
                var generator = SplitMix64(seed: UInt64(100 + writer))
                var mine: [Int: [UInt8]] = [:]
                do {
                    let connection = try connect()
                    var sequence = 0
                    while !isStopping && sequence < 1_000_000 {
                        let pair =
                            writer + Int(generator.next() % UInt64(pairCount / writerCount))
                            * writerCount
                        var bytes = [UInt8](
                            repeating: UInt8(truncatingIfNeeded: sequence),
                            count: Self.pairByteCount)
                        for (index, byte) in "w\(writer)s\(sequence)".utf8.enumerated() {
                            bytes[index] = byte
                        }
                        let issued = nowSeconds()
                        try connection.pwrite(bytes, at: UInt64(pair * Self.pairByteCount))
                        let acknowledged = nowSeconds()
                        mine[pair] = bytes
                        lock.withLock {
                            lastWrite[pair] = bytes
                            latencies.append((issued, acknowledged))
                        }
                        let check =
                            writer + Int(generator.next() % UInt64(pairCount / writerCount))
                            * writerCount
                        let start = check * Self.pairByteCount
                        let expected =
                            mine[check] ?? Array(initial[start..<(start + Self.pairByteCount)])
                        let read = try connection.pread(
                            at: UInt64(start), byteCount: Self.pairByteCount)
                        lock.withLock {
                            readCount += 1
                            if read != expected {
                                failures.append("writer \(writer): pair \(check) read wrong bytes")
                            }
                        }
                        sequence += 1
                        usleep(200)
                    }
                } catch {
                    lock.withLock { failures.append("writer \(writer): \(error)") }
                }
            }
        }
    }

    private var isStopping: Bool { lock.withLock { stopping } }
    var writeCount: Int { lock.withLock { latencies.count } }

    /// Stops the writers; returns the disk they leave, the write latencies and the failures.
    func stop() -> (
        model: [UInt8], latencies: [(issued: Double, acknowledged: Double)], reads: Int,
        failures: [String]
    ) {
        lock.withLock { stopping = true }
        _ = finished.wait(timeout: .now() + 60)
        return lock.withLock {
            var model = initial
            for (pair, bytes) in lastWrite {
                model.replaceSubrange(
                    (pair * Self.pairByteCount)..<((pair + 1) * Self.pairByteCount), with: bytes)
            }
            return (model, latencies, readCount, failures)
        }
    }
}

/// `cowbd ARGUMENTS` started in the background, its output in files of its own.
private final class BackgroundCommand {
    let process = Process()

    init(_ workspace: Workspace, _ arguments: [String]) throws {
        (process.executableURL, process.arguments) = dyingWithTestProcess(
            workspace.executable, arguments)
        process.currentDirectoryURL = workspace.folder
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        let errorPath = workspace.path("background.stderr")
        _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorPath))
        try runWithSignalsUnblocked(process)
    }

    /// Waits (bounded) for the end and returns the exit status.
    func wait(seconds: Double = 120) -> Int32? {
        guard waitUntil(seconds: seconds, { !process.isRunning }) else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

private func p99Milliseconds(_ latencies: [Double]) -> String {
    let sorted = latencies.sorted()
    guard !sorted.isEmpty else { return "n/a" }
    return String(format: "%.2f", sorted[min(sorted.count - 1, sorted.count * 99 / 100)] * 1000)
}

/// The live `collapse` object of `info --json`, nil while none ran.
private func liveCollapse(_ workspace: Workspace) throws -> [String: Any]? {
    let info = try workspace.json("info", "--json", "disk.cow")
    return (info["served"] as? [String: Any])?["collapse"] as? [String: Any]
}

@Suite("Live collapse of frozen layers") struct LiveCollapseTests {
    @Test func liveCollapseUnderWriteLoadKeepsEveryAcknowledgedWriteAndReadsRight() throws {
        let chain = try LayeredDisk()
        let workspace = chain.workspace
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("nbd.sock"))
        try server.start()
        defer { server.kill() }
        #expect(try server.connect().allBytes() == chain.model, "the chain is not its model")
        let load = ReadBackLoad(writerCount: 4, initial: chain.model)
        let socketPath = server.socketPath
        load.start {
            let connection = try NBDConnection()
            try connection.connect(unixSocketPath: socketPath)
            return connection
        }
        #expect(waitUntil(seconds: 60) { load.writeCount >= 400 })
        let commandStart = nowSeconds()
        let output = try workspace.succeed(
            "collapse", "disk.cow", "--depth", "3", "--into", "flat.cow")
        let commandEnd = nowSeconds()
        let countAfter = load.writeCount
        #expect(waitUntil(seconds: 60) { load.writeCount >= countAfter + 400 })
        let (model, latencies, reads, failures) = load.stop()
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(output.contains("flat.cow"), "\(output)")
        #expect(
            try server.connect().allBytes() == model, "the disk is not every acknowledged write")

        // The store is over the folded layer now, and the folded layers are no longer held.
        let info = try workspace.json("info", "--json", "disk.cow")
        #expect((info["base_resolved"] as? String)?.hasSuffix("/flat.cow") == true, "\(info)")
        for layer in ["l1.cow", "l2.cow", "l3.cow"] {
            #expect(
                try workspace.shell("flock -n -x \(layer) true").status == 0,
                "\(layer) still locked")
        }
        #expect(try workspace.shell("flock -n -x flat.cow true").status != 0, "flat.cow not held")

        try server.stop()
        try workspace.succeed("check", "disk.cow")
        #expect(try workspace.servedDisk("disk.cow") == model, "reopened disk differs")
        let during = latencies.filter { $0.acknowledged >= commandStart && $0.issued <= commandEnd }
        print(
            "live collapse (depth 3, 16 MiB disk, 4 read-back writers): command \(Int((commandEnd - commandStart) * 1000)) ms; writes during it: \(during.count), p99 \(p99Milliseconds(during.map { $0.acknowledged - $0.issued })) ms; all \(latencies.count) writes p99 \(p99Milliseconds(latencies.map { $0.acknowledged - $0.issued })) ms; \(reads) read-backs"
        )
    }

    @Test func throttledLiveCollapseShowsProgressAndRefusesASecondAndAMerge() throws {
        let chain = try LayeredDisk()
        let workspace = chain.workspace
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("nbd.sock"))
        try server.start()
        defer { server.kill() }
        let collapse = try BackgroundCommand(
            workspace,
            ["collapse", "disk.cow", "--depth", "2", "--into", "flat.cow", "--rate", "1M"])
        #expect(
            waitUntil(seconds: 30) {
                ((try? liveCollapse(workspace))?["done_bytes"] as? Int ?? 0) > 0
            })
        let running = try liveCollapse(workspace)
        #expect(running?["state"] as? String == "running", "\(running ?? [:])")
        #expect((running?["total_bytes"] as? Int ?? 0) > (running?["done_bytes"] as? Int ?? 0))
        #expect(running?["rate_limit"] as? Int == 1 << 20)
        let rows = try workspace.succeed("info", "disk.cow").split(separator: "\n")
        #expect(rows.contains { $0.hasPrefix("collapse:") && $0.contains("running, ") }, "\(rows)")

        let second = try workspace.cowbd(
            "collapse", "disk.cow", "--depth", "2", "--into", "other.cow")
        #expect(second.status != 0 && second.errorLines.count == 1, "\(second.standardError)")
        #expect(second.standardError.contains("a collapse is running already"))
        let merge = try workspace.cowbd("merge", "disk.cow", "--in-place")
        #expect(merge.status != 0 && merge.errorLines.count == 1, "\(merge.standardError)")
        #expect(merge.standardError.contains("refused while served"))
        #expect(try server.connect().allBytes() == chain.model, "the disk changed")

        #expect(collapse.wait() == 0)
        #expect(try liveCollapse(workspace)?["state"] as? String == "done")
        #expect(try server.connect().allBytes() == chain.model)
        let again = try workspace.succeed(
            "collapse", "disk.cow", "--depth", "2", "--into", "flat.cow")
        #expect(again.contains("nothing to do"), "\(again)")
    }

    @Test func serverKilledMidCollapseRestartsAndTheCommandRunAgainFinishesIt() throws {
        let chain = try LayeredDisk()
        let workspace = chain.workspace
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("nbd.sock"))
        try server.start()
        defer { server.kill() }
        let connection = try server.connect()
        let written = [UInt8](repeating: 0xA5, count: 8192)
        try connection.pwrite(written, at: 1 << 20, flags: .fua)
        var model = chain.model
        model.replaceSubrange((1 << 20)..<((1 << 20) + 8192), with: written)
        let collapse = try BackgroundCommand(
            workspace,
            ["collapse", "disk.cow", "--depth", "3", "--into", "flat.cow", "--rate", "2M"])
        #expect(
            waitUntil(seconds: 30) {
                ((try? liveCollapse(workspace))?["done_bytes"] as? Int ?? 0) > 0
            })
        server.kill()
        _ = collapse.wait()
        #expect(!workspace.exists("flat.cow"), "a half-written layer has the layer's name")

        try server.start()
        #expect(try server.connect().allBytes() == model, "the disk after the kill")
        try workspace.succeed("collapse", "disk.cow", "--depth", "3", "--into", "flat.cow")
        #expect(try server.connect().allBytes() == model, "the disk after the collapse")
        try server.stop()
        try workspace.succeed("check", "disk.cow")
        try workspace.succeed("check", "flat.cow")
        #expect(try workspace.servedDisk("disk.cow") == model)
        #expect(try workspace.entries { $0.contains("cowbd-fold") }.isEmpty, "a temporary is left")
    }

    @Test func serverKilledMidCollapseThenTheOfflineCommandFinishesIt() throws {
        let chain = try LayeredDisk()
        let workspace = chain.workspace
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("nbd.sock"))
        try server.start()
        defer { server.kill() }
        let collapse = try BackgroundCommand(
            workspace,
            ["collapse", "disk.cow", "--depth", "2", "--into", "flat.cow", "--rate", "1M"])
        #expect(
            waitUntil(seconds: 30) {
                ((try? liveCollapse(workspace))?["done_bytes"] as? Int ?? 0) > 0
            })
        server.kill()
        _ = collapse.wait()
        try workspace.succeed("collapse", "disk.cow", "--depth", "2", "--into", "flat.cow")
        try workspace.succeed("check", "disk.cow")
        let info = try workspace.json("info", "--json", "disk.cow")
        #expect((info["base_resolved"] as? String)?.hasSuffix("/flat.cow") == true, "\(info)")
        #expect(try workspace.servedDisk("disk.cow") == chain.model)
        #expect(try workspace.entries { $0.contains("cowbd-fold") }.isEmpty)
    }
}
