// Seeded random operations against VirtualDisk and an in-memory array of the expected bytes.

import CowStore
import Foundation
import SystemPackage
import Testing

/// The expected disk: bytes, plus which bytes a trim left undefined (old value or zero).
struct DiskModel {
    var bytes: [UInt8]
    var trimmed: [Bool]

    init(base: [UInt8], virtualByteCount: Int) {
        bytes = base + [UInt8](repeating: 0, count: virtualByteCount - base.count)
        trimmed = [Bool](repeating: false, count: virtualByteCount)
    }

    /// The index of the first byte that disagrees, or nil.
    func firstMismatch(_ actual: [UInt8], at offset: Int) -> Int? {
        if bytes[offset..<(offset + actual.count)].elementsEqual(actual) { return nil }
        for index in 0..<actual.count {
            let expected = bytes[offset + index]
            if actual[index] == expected { continue }
            if trimmed[offset + index] && actual[index] == 0 { continue }
            return offset + index
        }
        return nil
    }
}

struct ModelRun {
    let seed: UInt64
    let chunkByteCount: UInt64
    let baseByteCount: Int
    let virtualByteCount: Int
    let operationCount: Int
    var onDisk = false

    func run() throws {
        let scratch = try Scratch(onDisk: onDisk)
        let basePath = scratch.path("base.img")
        let storePath = scratch.path("disk.cow")
        let baseBytes = try makeBase(at: basePath, byteCount: baseByteCount, seed: seed)
        try createStore(
            at: storePath, base: basePath, chunkByteCount: chunkByteCount,
            virtualByteCount: UInt64(virtualByteCount))
        var model = DiskModel(base: baseBytes, virtualByteCount: virtualByteCount)
        var disk = try VirtualDisk.open(storePath: FilePath(storePath))
        let chunkScratch = disk.makeScratch()
        var generator = SplitMix64(seed: seed)

        func randomRange(maxLength: Int) -> (offset: Int, length: Int) {
            let chunk = Int(chunkByteCount)
            let offset: Int
            switch generator.next() % 5 {
            case 0:  // chunk-aligned
                offset = Int(generator.next() % UInt64(virtualByteCount / chunk)) * chunk
            case 1:  // near the last byte
                offset = virtualByteCount - 1 - Int(generator.next() % UInt64(2 * chunk))
            default: offset = Int(generator.next() % UInt64(virtualByteCount))
            }
            let length = 1 + Int(generator.next() % UInt64(maxLength))
            return (offset, min(length, virtualByteCount - offset))
        }

        for step in 0..<operationCount {
            let context = "seed \(seed), step \(step), chunk \(chunkByteCount)"
            switch generator.next() % 10 {
            case 0, 1, 2:
                let (offset, length) = randomRange(maxLength: 3 * Int(chunkByteCount))
                let data = randomBytes(length, &generator)
                try disk.writeBytes(
                    data, at: UInt64(offset), scratch: chunkScratch, fua: generator.next() % 8 == 0)
                model.bytes.replaceSubrange(offset..<(offset + length), with: data)
                model.trimmed.replaceSubrange(
                    offset..<(offset + length), with: repeatElement(false, count: length))
            case 3:
                let (offset, length) = randomRange(maxLength: 4 * Int(chunkByteCount))
                try disk.writeZeroes(
                    at: UInt64(offset), byteCount: UInt64(length),
                    mayPunch: generator.next() % 2 == 0,
                    scratch: chunkScratch)
                model.bytes.replaceSubrange(
                    offset..<(offset + length), with: repeatElement(0, count: length))
                model.trimmed.replaceSubrange(
                    offset..<(offset + length), with: repeatElement(false, count: length))
            case 4:
                let (offset, length) = randomRange(maxLength: 4 * Int(chunkByteCount))
                try disk.trim(at: UInt64(offset), byteCount: UInt64(length))
                model.trimmed.replaceSubrange(
                    offset..<(offset + length), with: repeatElement(true, count: length))
            case 5:
                try disk.flush()
                if generator.next() % 3 == 0 {
                    disk.close()  // releases the lock before the reopen
                    disk = try reopen(storePath)
                }
            default:
                let (offset, length) = randomRange(maxLength: 5 * Int(chunkByteCount))
                let actual = try disk.readBytes(at: UInt64(offset), count: length)
                if let mismatch = model.firstMismatch(actual, at: offset) {
                    Issue.record("\(context): byte \(mismatch) differs from the model")
                    return
                }
            }
        }
        try disk.flush()
        disk.close()
        disk = try reopen(storePath)
        let whole = try disk.readBytes(at: 0, count: virtualByteCount)
        if let mismatch = model.firstMismatch(whole, at: 0) {
            Issue.record("seed \(seed): after reopen, byte \(mismatch) differs from the model")
        }
        #expect(
            try fileBytes(basePath) == baseBytes, "the base must be byte-identical, seed \(seed)")
    }
}

/// Opens the store again (see `retryingWhileInUse` for why a reopen can find it locked).
func reopen(_ storePath: String) throws -> VirtualDisk {
    try retryingWhileInUse { try VirtualDisk.open(storePath: FilePath(storePath)) }
}

@Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
func randomOperationsAgreeWithTheModel(seed: UInt64) throws {
    let chunk: UInt64 = [4096, 65536, 4096, 16384, 1 << 20, 4096][Int(seed - 1)]
    try ModelRun(
        seed: seed, chunkByteCount: chunk, baseByteCount: 3 << 20 + 1234,
        virtualByteCount: 4 << 20 + 777,
        operationCount: 1500
    ).run()
}

@Test func diskExactlyTheSizeOfTheBaseAgreesWithTheModel() throws {
    try ModelRun(
        seed: 99, chunkByteCount: 4096, baseByteCount: 1 << 20 + 5, virtualByteCount: 1 << 20 + 5,
        operationCount: 2000
    )
    .run()
}

/// The same model on a real filesystem (the system temp folder), where hole punching and
/// SEEK_DATA behave as on a user's disk; fewer steps, since every flush is a real fsync.
@Test func randomOperationsOnARealFilesystemAgreeWithTheModel() throws {
    var run = ModelRun(
        seed: 77, chunkByteCount: 4096, baseByteCount: 2 << 20 + 99, virtualByteCount: 3 << 20,
        operationCount: 400)
    run.onDisk = true
    try run.run()
}

/// `count` pseudo-random bytes, eight at a time.
func randomBytes(_ count: Int, _ generator: inout SplitMix64) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: (count + 7) & ~7)
    bytes.withUnsafeMutableBytes { raw in
        for wordIndex in 0..<(raw.count / 8) {
            raw.storeBytes(of: generator.next(), toByteOffset: wordIndex * 8, as: UInt64.self)
        }
    }
    return Array(bytes.prefix(count))
}
