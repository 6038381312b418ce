// `cowbd compress` and compressed bases through the built binary and libnbd: a 96 MiB image of
// text, random, repetitive and zero stretches is compressed at both levels and served through a
// COW store, which must read back as the raw image, with zero blocks reported as holes; a store
// made over the raw image opens over its compressed twin; a damaged block fails only its own
// reads; the destination rules hold and a killed run leaves no image under the real name.

import Foundation
import NBDClient
import TestSupport
import Testing

@Suite("Compressed bases") struct CompressedBaseTests {
    static let goldenByteCount = 96 << 20
    static let mebibyte = 1 << 20

    /// 96 MiB, one kind of content per MiB: 10 MiB of numbered text lines, 12 MiB random,
    /// 18 MiB of a repeated 64-byte word, then zeros with a few random bytes every 8 MiB.
    static let golden: [UInt8] = {
        var generator = SplitMix64(seed: 96)
        var bytes = [UInt8](repeating: 0, count: goldenByteCount)
        var text: [UInt8] = []
        var lineNumber = 0
        while text.count < 10 * mebibyte {
            lineNumber += 1
            text += Array("alpha line \(lineNumber)\n".utf8)
        }
        bytes.replaceSubrange(0..<(10 * mebibyte), with: text.prefix(10 * mebibyte))
        for index in (10 * mebibyte)..<(22 * mebibyte) {
            bytes[index] = UInt8(truncatingIfNeeded: generator.next())
        }
        let word = (0..<64).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        for index in (22 * mebibyte)..<(40 * mebibyte) { bytes[index] = word[index % 64] }
        for megabyte in stride(from: 40, to: 96, by: 8) {
            for index in (megabyte * mebibyte)..<(megabyte * mebibyte + 3000) {
                bytes[index] = UInt8(truncatingIfNeeded: generator.next())
            }
        }
        return bytes
    }()

    /// A folder holding golden.img.
    static func workspaceWithGolden() throws -> Workspace {
        let workspace = try Workspace()
        try Data(golden).write(to: workspace.folder.appendingPathComponent("golden.img"))
        return workspace
    }

    /// The bytes `base:allocation` reports as holes; each hole must read as zeros in the raw
    /// image.
    static func holeByteCount(_ connection: NBDConnection) throws -> Int {
        var holeByteCount = 0
        var byteOffset = 0
        while byteOffset < goldenByteCount {
            let extents = try connection.blockStatus(
                at: UInt64(byteOffset), byteCount: UInt64(goldenByteCount - byteOffset))
            for extent in extents["base:allocation"] ?? [] {
                let end = min(goldenByteCount, byteOffset + Int(extent.length))
                if extent.flags & 1 != 0 {
                    #expect(
                        !golden[byteOffset..<end].contains { $0 != 0 },
                        "hole at \(byteOffset) is not zeros in the raw image")
                    holeByteCount += end - byteOffset
                }
                byteOffset = end
            }
        }
        return holeByteCount
    }

    /// `level` nil: no `--level`, which is `high`.
    @Test(arguments: ["fast", nil] as [String?])
    func aCompressedBaseServesTheRawImageWithZeroBlocksAsHoles(level: String?) throws {
        let workspace = try Self.workspaceWithGolden()
        // LZ4 HC against the dictionary takes a debug build on a busy machine past the
        // 60 s a command gets by default.
        let result = try runCommand(
            workspace.executable,
            ["compress", "golden.img", "golden.lz4", "--json"]
                + (level.map { ["--level", $0] } ?? []),
            in: workspace.folder, seconds: 300)
        try #require(result.status == 0, "compress: \(result.standardError)")
        let summary =
            try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8))
            as? [String: Any] ?? [:]
        let inputByteCount = summary["input_bytes"] as? Int ?? 0
        #expect(inputByteCount == Self.goldenByteCount)
        #expect((summary["output_bytes"] as? Int ?? .max) < inputByteCount / 2)
        #expect((summary["ratio"] as? Double ?? 0) > 2)
        #expect((summary["seconds"] as? Double ?? 0) > 0)
        #expect((summary["zero_blocks"] as? Int ?? 0) > 0)
        #expect(summary["level"] as? String == level ?? "high")
        try workspace.succeed("compress", "--verify", "golden.lz4")
        try workspace.succeed("create", "disk.cow", "--base", "golden.lz4")
        let info = try workspace.json("info", "--json", "disk.cow")
        #expect(info["base_kind"] as? String == "cowbd-lz4")
        #expect(info["fingerprint_status"] as? String == "ok")

        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("disk.sock"),
            extraArguments: ["--log-level", "warning", "--cache-size", "4M"])
        try server.start()
        let connection = try server.connect { try $0.addMetaContext("base:allocation") }
        #expect(try Self.holeByteCount(connection) > 0, "no hole reported")
        #expect(try connection.allBytes() == Self.golden)
        try connection.shutdown()
        try server.stop()
        #expect(workspace.contents("golden.img") == Data(Self.golden), "the raw image changed")
    }

    @Test func aStoreOverTheRawImageOpensOverItsCompressedTwin() throws {
        let workspace = try Self.workspaceWithGolden()
        try FileManager.default.copyItem(
            atPath: workspace.path("golden.img"), toPath: workspace.path("base.img"))
        try workspace.succeed("create", "vm.cow", "--base", "base.img")
        var model = Self.golden
        let server = ServedStore(store: workspace.path("vm.cow"), socket: workspace.path("s.sock"))
        try server.start()
        let connection = try server.connect()
        for (index, byteOffset) in [1000, 5_000_000, 40_000_001, Self.goldenByteCount - 7000]
            .enumerated()
        {
            let patch = [UInt8](repeating: UInt8(index + 1), count: 7000)
            try connection.pwrite(patch, at: UInt64(byteOffset))
            model.replaceSubrange(byteOffset..<(byteOffset + 7000), with: patch)
        }
        try connection.flush()
        try connection.shutdown()
        try server.stop()

        try workspace.succeed(
            "compress", "base.img", "base.lz4", "--level", "high", "--block-size", "64K")
        try FileManager.default.removeItem(atPath: workspace.path("base.img"))
        try FileManager.default.moveItem(
            atPath: workspace.path("base.lz4"), toPath: workspace.path("base.img"))
        let info = try workspace.succeed("info", "vm.cow").split(separator: "\n")
        #expect(info.contains { $0.wholeMatch(of: /base kind: +cowbd-lz4/) != nil })
        #expect(info.contains { $0.wholeMatch(of: /fingerprint status: +ok/) != nil })
        try workspace.succeed("check", "vm.cow")
        #expect(try workspace.servedDisk("vm.cow") == model)

        // Flatten the disk into a new compressed image, and serve a store over that.
        try workspace.succeed("compress", "vm.cow", "flat.lz4", "--threads", "2")
        try workspace.succeed("create", "flat.cow", "--base", "flat.lz4")
        #expect(try workspace.servedDisk("flat.cow") == model)
    }

    @Test func aDamagedBlockFailsOnlyItsOwnReads() throws {
        let workspace = try Self.workspaceWithGolden()
        try workspace.succeed("compress", "golden.img", "damaged.lz4", "--block-size", "64K")
        let block = try LZ4ImageDamage.flipAByteOfAnUnsampledBlock(workspace.path("damaged.lz4"))
        let verify = try workspace.cowbd("compress", "--verify", "damaged.lz4")
        expectOneLineError(verify)
        #expect(
            verify.standardOutput.contains("block \(block): checksum mismatch"),
            "\(verify.standardOutput)")

        try workspace.succeed("create", "disk.cow", "--base", "damaged.lz4")
        let server = ServedStore(
            store: workspace.path("disk.cow"), socket: workspace.path("s.sock"))
        try server.start()
        let connection = try server.connect()
        let blockByteCount = LZ4ImageDamage.blockByteCount
        for _ in 0..<3 {
            #expect {
                _ = try connection.pread(
                    at: UInt64(block * blockByteCount + 8192), byteCount: 4096)
            } throws: { ($0 as? NBDClientError)?.errno == EIO }
        }
        for neighbour in Set([0, block - 1, block + 1, block + 2]).subtracting([block]).sorted() {
            let start = neighbour * blockByteCount
            let read = try connection.pread(at: UInt64(start), byteCount: blockByteCount)
            #expect(
                read[...] == Self.golden[start..<(start + blockByteCount)], "block \(neighbour)")
        }
        #expect(server.isRunning)
        try connection.shutdown()
        try server.stop()
        #expect(server.logTail().contains("block \(block)"), "\(server.logTail())")
    }

    @Test func theDestinationRulesHoldAndAKilledRunLeavesNoImage() throws {
        let workspace = try Self.workspaceWithGolden()
        // Any file is in the way: the refusal comes before reading.
        try Data("in the way".utf8).write(to: workspace.folder.appendingPathComponent("golden.lz4"))
        let exists = try workspace.cowbd("compress", "golden.img", "golden.lz4")
        expectOneLineError(exists)
        #expect(exists.standardError.contains("already exists"))
        try workspace.succeed(
            "compress", "golden.img", "golden.lz4", "--force", "--block-size", "1M")
        let verified = try workspace.json("compress", "--verify", "--json", "golden.lz4")
        #expect(verified["intact"] as? Bool == true)
        #expect(verified["blocks"] as? Int == 96)
        expectOneLineError(
            try workspace.cowbd("compress", "golden.img", "x.lz4", "--block-size", "8K"))
        #expect(try workspace.cowbd("compress", "golden.img").status != 0)

        // SIGKILL mid-run: no image under the real name and nothing left behind (the image is
        // written to an unnamed O_TMPFILE and linked into place only when complete).
        try workspace.writeRandomFile("random.img", byteCount: 160 << 20, seed: 160)
        try workspace.cowbdKilled(
            afterMilliseconds: 500,
            ["compress", "random.img", "killed.lz4", "--level", "high", "--threads", "1"])
        #expect(workspace.contents("killed.lz4") == nil)
        let leftovers = try workspace.entries { $0.hasPrefix(".killed.lz4.tmp.") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}

/// Damages a cowbd-lz4 image (docs/FORMAT.md) where the base fingerprint does not look, so a
/// store can still be made over it.
enum LZ4ImageDamage {
    static let blockByteCount = 65536

    /// Flips a byte in the middle of the first block stored compressed (flags 0) that lies
    /// outside the bytes the fingerprint samples (the first and last 64 KiB, and 64 pages), and
    /// returns its index. The image must use 64 KiB blocks.
    static func flipAByteOfAnUnsampledBlock(_ path: String) throws -> Int {
        guard var image = FileManager.default.contents(atPath: path).map(Array.init) else {
            throw TestFailure("cannot read \(path)")
        }
        func integer(_ byteOffset: Int, _ byteCount: Int) -> Int {
            (0..<byteCount).reduce(0) { $0 | Int(image[byteOffset + $1]) << (8 * $1) }
        }
        let diskByteCount = integer(24, 8)
        let blockCount = integer(32, 8)
        var sampled = [(0, 65536), (diskByteCount - 65536, diskByteCount)]
        for index in 0..<64 {
            let start = ((diskByteCount - 4096) / 63 * index) & ~4095
            sampled.append((start, start + 4096))
        }
        for block in 0..<blockCount {
            let entry = 4096 + block * 32
            let (start, end) = (block * blockByteCount, (block + 1) * blockByteCount)
            guard integer(entry + 12, 4) == 0,
                !sampled.contains(where: { $0.0 < end && start < $0.1 })
            else { continue }
            let target = integer(entry, 8) + integer(entry + 8, 4) / 2
            image[target] ^= 0x40
            try Data(image).write(to: URL(fileURLWithPath: path))
            return block
        }
        throw TestFailure("no compressed block outside the fingerprint's samples in \(path)")
    }
}
