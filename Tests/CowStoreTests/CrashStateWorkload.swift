// The recorded half of the crash-state explorer: a seeded run of writes, zeroes, trims, flushes,
// FUA writes, checkpoints and reopens through VirtualDisk, with every store I/O recorded
// (TestStoreIO) and, for each operation, the events it made and the bytes it left.

import CowFormat
import CowStore
import Foundation
import SystemPackage
import Testing

/// What one operation of the run did, placed in the recorded log.
struct RecordedOperation {
    /// Its events are `events[firstEvent..<endEvent]`.
    var firstEvent: Int
    var endEvent: Int
    /// When it returned, every earlier change was durable (a flush, a FUA write, a checkpoint).
    var completesFlush: Bool
    /// The disk bytes it changed and what they read right after it; nil if it changed none.
    var change: (virtualByteOffset: UInt64, bytes: [UInt8])?
    var summary: String
}

/// A workload's shape: the disk, the areas it writes and how many operations.
struct CrashWorkload {
    var seed: UInt64
    var chunkByteCount: UInt64
    var baseByteCount: Int
    var virtualByteCount: UInt64
    /// The areas operations touch (each op stays inside one); the explorer reads them back.
    var areas: [Range<UInt64>]
    var operationCount: Int
    var withCheckpoints: Bool
}

/// The recorded run: the store as created, the log, and the operations.
struct CrashRecording {
    var workload: CrashWorkload
    var scratch: Scratch
    var basePath: String
    var baseBytes: [UInt8]
    var header: StoreHeader
    var initialImage: FileImage
    var events: [StoreIOEvent] = []
    var operations: [RecordedOperation] = []

    /// The disk's byte before any operation: the base's, or zero past it.
    func initialByte(_ virtualByteOffset: UInt64) -> UInt8 {
        virtualByteOffset < UInt64(baseBytes.count) ? baseBytes[Int(virtualByteOffset)] : 0
    }
}

/// Collects events over several opens of the store, one TestStoreIO each.
private final class EventLog {
    var finished: [StoreIOEvent] = []
    var session: TestStoreIO?
    var count: Int { finished.count + (session?.events.count ?? 0) }
    func endSession() {
        finished += session?.events ?? []
        session = nil
    }
}

extension CrashWorkload {
    /// Creates the store, records the run and checks each operation's bytes on the live disk.
    func record() throws -> CrashRecording {
        let scratch = try Scratch()
        let basePath = scratch.path("base")
        let storePath = scratch.path("cow")
        let baseBytes = try makeBase(at: basePath, byteCount: baseByteCount, seed: seed)
        try createStore(
            at: storePath, base: basePath, chunkByteCount: chunkByteCount,
            virtualByteCount: virtualByteCount)
        let initialImage = try FileImage(readingFileAt: storePath)
        var recording = CrashRecording(
            workload: self, scratch: scratch, basePath: basePath, baseBytes: baseBytes,
            header: try initialImage.bytes(at: 0, count: StoreHeader.byteCount).withUnsafeBytes {
                try StoreHeader(parsing: $0)
            },
            initialImage: initialImage)
        let log = EventLog()
        var disk = try open(storePath, log)
        var chunkScratch = disk.makeScratch()
        var generator = SplitMix64(seed: seed)
        var checkpointNames: [String] = []
        var checkpointSerial = 0

        func run(
            _ summary: String, completesFlush: Bool = false,
            change range: Range<UInt64>? = nil, _ body: () throws -> Void
        ) throws {
            let first = log.count
            try body()
            var change: (UInt64, [UInt8])? = nil
            if let range {
                change = (
                    range.lowerBound, try disk.readBytes(at: range.lowerBound, count: range.count)
                )
            }
            recording.operations.append(
                RecordedOperation(
                    firstEvent: first, endEvent: log.count, completesFlush: completesFlush,
                    change: change, summary: summary))
        }

        for step in 0..<operationCount {
            let range = randomRange(&generator)
            let context = "seed \(seed), step \(step)"
            switch generator.next() % 20 {
            case 0..<7:
                let fua = generator.next() % 6 == 0
                let data = randomBytes(range.count, &generator)
                try run("write \(range)\(fua ? " FUA" : "")", completesFlush: fua, change: range) {
                    try disk.writeBytes(data, at: range.lowerBound, scratch: chunkScratch, fua: fua)
                }
                try #require(recording.operations.last?.change?.bytes == data, "\(context): write")
            case 7..<10:
                let mayPunch = generator.next() % 2 == 0
                try run("zero \(range)\(mayPunch ? "" : " NO_HOLE")", change: range) {
                    try disk.writeZeroes(
                        at: range.lowerBound, byteCount: UInt64(range.count), mayPunch: mayPunch,
                        scratch: chunkScratch)
                }
                try #require(
                    recording.operations.last?.change?.bytes.allSatisfy { $0 == 0 } == true,
                    "\(context): write zeroes")
            case 10..<12:
                let before = try disk.readBytes(at: range.lowerBound, count: range.count)
                try run("trim \(range)", change: range) {
                    try disk.trim(at: range.lowerBound, byteCount: UInt64(range.count))
                }
                let after = recording.operations.last?.change?.bytes ?? []
                try #require(
                    zip(before, after).allSatisfy { $0 == $1 || $1 == 0 },
                    "\(context): a trim left bytes other than the old ones or zeros")
            case 12..<16:
                try run("flush", completesFlush: true) { try disk.flush() }
            case 16, 17:
                guard withCheckpoints else { continue }
                if checkpointNames.count < 2 && generator.next() % 3 != 0 {
                    checkpointSerial += 1
                    let name = "c\(checkpointSerial)"
                    let fingerprint = try disk.fingerprint()
                    try run("checkpoint \(name)", completesFlush: true) {
                        try disk.store.addCheckpoint(
                            Checkpoint(
                                name: name, id: UInt64(checkpointSerial),
                                createdUnixSeconds: 0, diskFingerprint: fingerprint))
                    }
                    checkpointNames.append(name)
                } else if !checkpointNames.isEmpty {
                    let name = checkpointNames.remove(
                        at: Int(generator.next() % 2) % checkpointNames.count)
                    try run("delete checkpoint \(name)") {
                        try disk.store.deleteCheckpoint(named: name)
                    }
                }
            default:
                try run("flush", completesFlush: true) { try disk.flush() }
                try run("reopen") {
                    disk.close()
                    log.endSession()
                    disk = try open(storePath, log)
                }
                chunkScratch = disk.makeScratch()
            }
        }
        // A last burst of unflushed changes, so the end of the log is a crash point too.
        let tail = randomRange(&generator)
        let data = randomBytes(tail.count, &generator)
        try run("write \(tail)", change: tail) {
            try disk.writeBytes(data, at: tail.lowerBound, scratch: chunkScratch)
        }
        recording.events = log.finished + (log.session?.events ?? [])
        // Whatever the close writes comes after the last crash point: it is not replayed.
        disk.close()
        return recording
    }

    /// A range inside one area: chunk-aligned, ending at the area's end, or anywhere; up to
    /// three chunks long.
    private func randomRange(_ generator: inout SplitMix64) -> Range<UInt64> {
        let area = areas[Int(generator.next() % UInt64(areas.count))]
        let areaByteCount = UInt64(area.count)
        var offset: UInt64
        switch generator.next() % 4 {
        case 0: offset = (generator.next() % areaByteCount) & ~(chunkByteCount - 1)
        case 1:
            offset = areaByteCount - 1 - generator.next() % min(areaByteCount, 2 * chunkByteCount)
        default: offset = generator.next() % areaByteCount
        }
        let length = min(areaByteCount - offset, 1 + generator.next() % (3 * chunkByteCount))
        offset += area.lowerBound
        return offset..<(offset + length)
    }

    private func open(_ storePath: String, _ log: EventLog) throws -> VirtualDisk {
        let (disk, io) = try retryingWhileInUse { try openDiskWithTestIO(at: storePath) }
        log.session = io
        return disk
    }
}
