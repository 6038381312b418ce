// Kills `cowbd serve` with SIGKILL at a random instant while a libnbd client writes random
// data at random (unaligned) offsets and flushes now and then, restarts it, and checks: every
// write acknowledged before the last completed FLUSH (or with FUA) reads back exactly; every
// other byte reads as its durable value or as the value of a write not yet flushed; `cowbd
// check` exits 0; the base is unchanged. COWBD_CRASH_SEED picks the seed.
//
// A killed process leaves what it wrote in the page cache, so this proves the protocol-level
// promise and the store's consistency after a process crash, not fsync ordering on power loss
// (tools/power-test does that).

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("cowbd serve killed mid-write") struct CrashTests {
    static let diskByteCount = 8 << 20
    static let pageByteCount = 4096
    static let writeByteCounts = [1, 100, 4096, 5000, 65536, 200_000]
    static let trialCount = 20
    static let seed = seedFromEnvironment("COWBD_CRASH_SEED")

    /// What the disk must hold after the kill: the bytes as of the last completed flush, and
    /// the writes since then (acknowledged or in flight), any of which may or may not show.
    struct Model {
        var durable: [UInt8]
        var unflushed: [(byteOffset: Int, bytes: [UInt8])] = []

        mutating func flushed() {
            for write in unflushed { place(write.bytes, at: write.byteOffset) }
            unflushed.removeAll()
        }

        /// A FUA write: durable on its reply, so earlier unflushed writes no longer show in its
        /// range.
        mutating func wroteDurably(_ bytes: [UInt8], at byteOffset: Int) {
            let end = byteOffset + bytes.count
            unflushed = unflushed.flatMap { write -> [(byteOffset: Int, bytes: [UInt8])] in
                let writeEnd = write.byteOffset + write.bytes.count
                var pieces: [(byteOffset: Int, bytes: [UInt8])] = []
                if write.byteOffset < byteOffset {
                    let cut = min(writeEnd, byteOffset) - write.byteOffset
                    pieces.append((write.byteOffset, Array(write.bytes[..<cut])))
                }
                if writeEnd > end {
                    let cut = max(write.byteOffset, end)
                    pieces.append((cut, Array(write.bytes[(cut - write.byteOffset)...])))
                }
                return pieces
            }
            place(bytes, at: byteOffset)
        }

        private mutating func place(_ bytes: [UInt8], at byteOffset: Int) {
            durable.replaceSubrange(byteOffset..<(byteOffset + bytes.count), with: bytes)
        }

        /// nil if `actual` is a disk the model allows, else the first byte it does not.
        func firstUnexplainedByte(in actual: [UInt8]) -> String? {
            for page in stride(from: 0, to: actual.count, by: CrashTests.pageByteCount) {
                let end = min(actual.count, page + CrashTests.pageByteCount)
                if actual[page..<end].elementsEqual(durable[page..<end]) { continue }
                for index in page..<end where actual[index] != durable[index] {
                    let explained = unflushed.contains { write in
                        (write.byteOffset..<(write.byteOffset + write.bytes.count)).contains(index)
                            && write.bytes[index - write.byteOffset] == actual[index]
                    }
                    if !explained {
                        return "byte \(index) reads \(actual[index]): neither durable "
                            + "(\(durable[index])) nor an unflushed write"
                    }
                }
            }
            return nil
        }
    }

    static func randomBytes(_ count: Int, _ generator: inout SplitMix64) -> [UInt8] {
        var words = [UInt64](repeating: 0, count: (count + 7) / 8)
        for index in words.indices { words[index] = generator.next() }
        return words.withUnsafeBytes { Array($0.prefix(count)) }
    }

    @Test(arguments: 0..<trialCount)
    func flushedWritesSurviveAKillAndTheStoreStaysConsistent(trial: Int) throws {
        var generator = SplitMix64(seed: Self.seed &+ UInt64(trial))
        let workspace = try Workspace()
        let base =
            Self.randomBytes(Self.diskByteCount / 2, &generator)
            + [UInt8](repeating: 0, count: Self.diskByteCount / 2)
        try Data(base).write(to: workspace.folder.appendingPathComponent("base.img"))
        try workspace.succeed("create", "disk.cow", "--base", "base.img")
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("s.sock"),
            extraArguments: ["--log-level", "error"])
        try server.start()

        let delayMilliseconds = 50 + Int(generator.next() % 1450)
        let processIdentifier = server.processIdentifier
        let killer = DispatchWorkItem { _ = kill(processIdentifier, SIGKILL) }
        DispatchQueue.global().asyncAfter(
            deadline: .now() + .milliseconds(delayMilliseconds), execute: killer)
        var model = Model(durable: base)
        var writeCount = 0
        do {
            let connection = try server.connect()
            while true {
                let byteOffset = Int(generator.next() % UInt64(Self.diskByteCount - 1))
                let wanted = Self.writeByteCounts[Int(generator.next() % 6)]
                let bytes = Self.randomBytes(
                    min(Self.diskByteCount - byteOffset, wanted), &generator)
                let fua = generator.next() % 100 < 5
                model.unflushed.append((byteOffset, bytes))
                try connection.pwrite(bytes, at: UInt64(byteOffset), flags: fua ? .fua : [])
                writeCount += 1
                if fua {
                    model.unflushed.removeLast()
                    model.wroteDurably(bytes, at: byteOffset)
                }
                if generator.next() % 10 == 0 {
                    try connection.flush()
                    model.flushed()
                }
            }
        } catch is NBDClientError {
            // The server is gone.
        }
        killer.wait()
        server.reap()

        let check = try workspace.cowbd("check", "disk.cow")
        #expect(check.status == 0, "seed \(Self.seed), trial \(trial): \(check.standardOutput)")
        try server.start()
        let actual = try server.connect().pread(at: 0, byteCount: Self.diskByteCount)
        try server.stop()
        let unexplained = model.firstUnexplainedByte(in: actual)
        #expect(
            unexplained == nil,
            Comment(
                rawValue: "seed \(Self.seed), trial \(trial), killed after "
                    + "\(delayMilliseconds) ms and \(writeCount) writes: \(unexplained ?? "")"))
        #expect(workspace.contents("base.img") == Data(base), "the base changed")
    }
}
