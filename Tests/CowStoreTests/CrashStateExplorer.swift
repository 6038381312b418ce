// The replaying half of the crash-state explorer (dm-log-writes + replay-log, CrashMonkey,
// ALICE): for every sync point of a recorded run, builds files a power cut could leave (the
// durable prefix plus kept, dropped, reordered and torn changes made since the sync before it),
// opens each with the normal code, checks it and compares every byte with the model.

import CowFormat
import CowStore
import Foundation
import SystemPackage

/// How many crash states to build at each sync point.
struct CrashStateBudget {
    /// Random subsets tried, in log order and again shuffled, when a window is too large for all.
    var randomStateCount: Int
    /// Windows of at most this many pieces are tried with every subset.
    var exhaustivePieceCount: Int
    /// Operations the recorded run makes.
    var operationCount: Int
    /// One state in this many is also written to, flushed and read again after the crash.
    var recoveryInterval = 4

    static let standard = CrashStateBudget(
        randomStateCount: 4, exhaustivePieceCount: 4, operationCount: 120)
    static let long = CrashStateBudget(
        randomStateCount: 24, exhaustivePieceCount: 8, operationCount: 600)

    /// COWBD_CRASH_STATES=long for the long run, or a number of random states a sync point.
    static func fromEnvironment() -> CrashStateBudget {
        let value = ProcessInfo.processInfo.environment["COWBD_CRASH_STATES"] ?? ""
        if value == "long" { return .long }
        if let count = Int(value), count > 0 {
            return CrashStateBudget(
                randomStateCount: count, exhaustivePieceCount: 6, operationCount: 120 + count * 10)
        }
        return .standard
    }
}

/// What the exploration found.
struct CrashExplorationResult {
    var syncPointCount = 0
    var stateCount = 0
    var wrongByteCount = 0
    /// States whose check found problems, or that did not open.
    var brokenStateCount = 0
    var leakStateCount = 0
    /// States written to again after the crash (verifyRecovery).
    var recoveryCount = 0
    /// The first failures, each with what reproduces it.
    var failures: [String] = []

    mutating func fail(_ message: String) {
        if failures.count < 8 { failures.append(message) }
    }
}

struct CrashStateExplorer {
    let recording: CrashRecording
    let budget: CrashStateBudget
    /// Replays the log as if every `fsync` were missing (only `fdatasync`s order the writes):
    /// a store that wrote its bitmap before its data was durable. The explorer must fail then.
    var ignoresDataSyncs = false

    /// A sector of 512 bytes in the bitmaps (a page may tear), 4 KiB elsewhere.
    private func sectorByteCount(_ fileByteOffset: UInt64) -> UInt64 {
        let header = recording.header
        let bitmapEnd = header.bitmapByteOffset + header.bitmapByteCount
        if fileByteOffset >= header.bitmapByteOffset && fileByteOffset < bitmapEnd { return 512 }
        let slotsStart = header.checkpointBitmapByteOffset(slot: 0)
        if header.checkpointAreaByteOffset > header.dataByteOffset && fileByteOffset >= slotsStart {
            return 512
        }
        return 4096
    }

    func explore() throws -> CrashExplorationResult {
        var result = CrashExplorationResult()
        let events = recording.events
        let crashPoints =
            events.indices.filter {
                events[$0] == .synchronizeData
                    || (events[$0] == .synchronizeAll && !ignoresDataSyncs)
            } + [events.count]
        var durable = recording.initialImage
        var model = CrashModel(recording: recording)
        var generator = SplitMix64(seed: recording.workload.seed ^ 0x5EED_C0DE)
        var windowStart = 0
        let crashPath = recording.scratch.path("crash")
        for crashPoint in crashPoints {
            let window = events[windowStart..<crashPoint]
            let pieces = window.flatMap {
                CrashPiece.pieces(of: $0, sectorByteCount: sectorByteCount)
            }
            model.advance(to: crashPoint)
            result.syncPointCount += 1
            for kept in orders(pieces.count, &generator) {
                var image = durable
                for index in kept { image.apply(pieces[index]) }
                try image.write(to: crashPath)
                result.stateCount += 1
                let context =
                    "seed \(recording.workload.seed), crash before event \(crashPoint) of "
                    + "\(events.count), pieces kept \(kept) of \(pieces.count)"
                let found = verify(crashPath, image, model, context, &result)
                if let found, result.stateCount % budget.recoveryInterval == 0 {
                    verifyRecovery(crashPath, found, model, context, &generator, &result)
                }
            }
            for piece in pieces { durable.apply(piece) }
            windowStart = crashPoint + 1
        }
        return result
    }

    /// The subsets of `count` pieces to keep, each in the order it is applied.
    private func orders(_ count: Int, _ generator: inout SplitMix64) -> [[Int]] {
        crashOrders(
            count: count, exhaustiveUpTo: budget.exhaustivePieceCount,
            shuffleCount: budget.randomStateCount / 2, prefixCount: 2,
            randomCount: budget.randomStateCount, generator: &generator)
    }

    /// Runs `check` (no repair) on the store at `path`: its report, or nil after counting a
    /// broken state when it finds a problem.
    private func cleanCheck(
        _ path: String, _ context: String, _ result: inout CrashExplorationResult
    ) throws -> StoreCheckReport? {
        let report = try retryingWhileInUse {
            try StoreCheck.run(storePath: FilePath(path), repair: false)
        }
        let problems = report.findings.filter { $0.severity == .problem }
        guard problems.isEmpty else {
            result.brokenStateCount += 1
            result.fail("\(context): check: \(problems.map(\.message))")
            return nil
        }
        return report
    }

    /// Checks the store at `path` (built from `image`) and compares its bytes with `model`;
    /// returns the areas' bytes as found, or nil if the store was broken.
    private func verify(
        _ path: String, _ image: FileImage, _ model: CrashModel, _ context: String,
        _ result: inout CrashExplorationResult
    ) -> [[UInt8]]? {
        do {
            guard let report = try cleanCheck(path, context, &result) else { return nil }
            if report.leakedChunkCount > 0 { result.leakStateCount += 1 }
            let disk = try retryingWhileInUse {
                try VirtualDisk.open(storePath: FilePath(path), readOnly: true)
            }
            defer { disk.close() }
            var found: [[UInt8]] = []
            for (areaIndex, area) in recording.workload.areas.enumerated() {
                let actual = try disk.readBytes(at: area.lowerBound, count: area.count)
                found.append(actual)
                let wrong = model.wrongBytes(actual, area: areaIndex)
                if let first = wrong.first {
                    result.wrongByteCount += wrong.count
                    result.fail(
                        "\(context): \(wrong.count) wrong bytes from byte \(first) "
                            + "(reads \(actual[Int(first - area.lowerBound)]), \(model.describe(first, area: areaIndex)))"
                    )
                }
            }
            try compareChunksOutsideAreas(image, disk, context, &result)
            return found
        } catch {
            result.brokenStateCount += 1
            result.fail("\(context): \(error)")
            return nil
        }
    }

    /// The next writer after the crash: one write into the disk as found (often over a change
    /// the crash may have left as leaked data), a flush and a reopen must read as exactly what
    /// was found plus that write (a leaked chunk's bytes never show through a copy-up), and
    /// check must stay clean.
    private func verifyRecovery(
        _ path: String, _ found: [[UInt8]], _ model: CrashModel, _ context: String,
        _ generator: inout SplitMix64, _ result: inout CrashExplorationResult
    ) {
        let areas = recording.workload.areas
        let chunkByteCount = recording.workload.chunkByteCount
        var start = areas[0].lowerBound + generator.next() % UInt64(areas[0].count)
        if !model.pending.isEmpty && generator.next() % 4 != 0 {
            let change = model.pending[Int(generator.next() % UInt64(model.pending.count))]
            start = change.virtualByteOffset + generator.next() % UInt64(change.bytes.count)
        }
        guard let areaIndex = areas.firstIndex(where: { $0.contains(start) }) else { return }
        let area = areas[areaIndex]
        let count = Int(min(area.upperBound - start, 1 + generator.next() % (2 * chunkByteCount)))
        let data = randomBytes(count, &generator)
        var expected = found
        let offsetInArea = Int(start - area.lowerBound)
        expected[areaIndex].replaceSubrange(offsetInArea..<(offsetInArea + count), with: data)
        let context = "\(context), then a write of \(count) bytes at \(start)"
        result.recoveryCount += 1
        do {
            let disk = try retryingWhileInUse { try VirtualDisk.open(storePath: FilePath(path)) }
            do {
                try disk.writeBytes(data, at: start, scratch: disk.makeScratch())
                try disk.flush()
            } catch {
                disk.close()
                throw error
            }
            disk.close()
            guard try cleanCheck(path, context, &result) != nil else { return }
            let reopened = try retryingWhileInUse {
                try VirtualDisk.open(storePath: FilePath(path), readOnly: true)
            }
            defer { reopened.close() }
            for (index, area) in areas.enumerated() {
                let actual = try reopened.readBytes(at: area.lowerBound, count: area.count)
                guard actual != expected[index] else { continue }
                let wrong = actual.indices.filter { actual[$0] != expected[index][$0] }
                result.wrongByteCount += wrong.count
                result.fail(
                    "\(context): \(wrong.count) wrong bytes from byte "
                        + "\(area.lowerBound + UInt64(wrong.first ?? 0))")
            }
        } catch {
            result.brokenStateCount += 1
            result.fail("\(context): \(error)")
        }
    }

    /// Every chunk outside the areas was never written: if a crash state marks one held, it must
    /// still read as the base (it would not: its data region is a hole).
    private func compareChunksOutsideAreas(
        _ image: FileImage, _ disk: VirtualDisk, _ context: String,
        _ result: inout CrashExplorationResult
    ) throws {
        let header = recording.header
        let geometry = header.geometry
        let areas = recording.workload.areas
        if areas.count == 1 && areas[0] == 0..<header.virtualByteCount { return }
        let bitmap = image.bytes(at: header.bitmapByteOffset, count: Int(header.bitmapByteCount))
        let wordCount = bitmap.count / 8
        let setWords = bitmap.withUnsafeBytes { bytes in
            (0..<wordCount).filter { bytes.load(fromByteOffset: $0 * 8, as: UInt64.self) != 0 }
        }
        for byteIndex in setWords.flatMap({ ($0 * 8)..<($0 * 8 + 8) }) {
            let byte = bitmap[byteIndex]
            for bit in 0..<8 where byte & (1 << bit) != 0 {
                let chunkIndex = UInt64(byteIndex * 8 + bit)
                let start = geometry.byteOffset(ofChunk: chunkIndex)
                guard start < header.virtualByteCount,
                    !recording.workload.areas.contains(where: { $0.contains(start) })
                else { continue }
                let count = Int(min(geometry.chunkByteCount, header.virtualByteCount - start))
                let actual = try disk.readBytes(at: start, count: count)
                let wrong = (0..<count).filter {
                    actual[$0] != recording.initialByte(start + UInt64($0))
                }
                if !wrong.isEmpty {
                    result.wrongByteCount += wrong.count
                    result.fail("\(context): chunk \(chunkIndex), never written, reads changed")
                }
            }
        }
    }
}

/// The model at a crash point: each area's bytes as of the last completed flush, and the
/// changes made after it (up to the crash), whose bytes a crash may or may not keep.
struct CrashModel {
    let recording: CrashRecording
    private(set) var flushed: [[UInt8]]
    private(set) var pending: [(virtualByteOffset: UInt64, bytes: [UInt8])] = []
    private var nextOperation = 0

    init(recording: CrashRecording) {
        self.recording = recording
        flushed = recording.workload.areas.map { area in area.map { recording.initialByte($0) } }
    }

    /// Moves the crash to just before event `crashPoint` completes (a sync) or to the log's end.
    mutating func advance(to crashPoint: Int) {
        let operations = recording.operations
        // The operations started before the crash; the last flush among those that returned.
        var issuedEnd = nextOperation
        while issuedEnd < operations.count && operations[issuedEnd].firstEvent <= crashPoint {
            issuedEnd += 1
        }
        if crashPoint == recording.events.count { issuedEnd = operations.count }
        let completed = (nextOperation..<issuedEnd).last {
            operations[$0].completesFlush && operations[$0].endEvent <= crashPoint
        }
        if let completed {
            for operation in operations[nextOperation...completed] {
                if let change = operation.change { apply(change) }
            }
            nextOperation = completed + 1
        }
        pending = operations[nextOperation..<issuedEnd].compactMap(\.change)
    }

    private mutating func apply(_ change: (virtualByteOffset: UInt64, bytes: [UInt8])) {
        let areaIndex = area(containing: change.virtualByteOffset)
        let start = Int(change.virtualByteOffset - recording.workload.areas[areaIndex].lowerBound)
        flushed[areaIndex].replaceSubrange(start..<(start + change.bytes.count), with: change.bytes)
    }

    private func area(containing virtualByteOffset: UInt64) -> Int {
        guard
            let index = recording.workload.areas.firstIndex(where: {
                $0.contains(virtualByteOffset)
            })
        else { preconditionFailure("a change outside the areas") }
        return index
    }

    /// The virtual offsets of the bytes of area `areaIndex` that read neither as flushed nor as
    /// any change made since.
    func wrongBytes(_ actual: [UInt8], area areaIndex: Int) -> [UInt64] {
        let areaStart = recording.workload.areas[areaIndex].lowerBound
        let blockByteCount = 4096
        var wrong: [UInt64] = []
        actual.withUnsafeBytes { actualBytes in
            flushed[areaIndex].withUnsafeBytes { expectedBytes in
                guard let actualStart = actualBytes.baseAddress,
                    let expectedStart = expectedBytes.baseAddress,
                    memcmp(actualStart, expectedStart, actual.count) != 0
                else { return }
                // Block by block with memcmp, byte by byte only where a block differs.
                for blockStart in stride(from: 0, to: actual.count, by: blockByteCount) {
                    let blockEnd = min(actual.count, blockStart + blockByteCount)
                    guard
                        memcmp(
                            actualStart + blockStart, expectedStart + blockStart,
                            blockEnd - blockStart) != 0
                    else { continue }
                    let block = blockStart..<blockEnd
                    if isExplained(block, areaStart, actualStart, expectedStart) { continue }
                    for index in block where actualBytes[index] != expectedBytes[index] {
                        let virtualByteOffset = areaStart + UInt64(index)
                        if !isPending(virtualByteOffset, actualBytes[index]) {
                            wrong.append(virtualByteOffset)
                        }
                    }
                }
            }
        }
        return wrong
    }

    /// The fast answer for a block that differs from the flushed bytes: true when every part of
    /// it reads either as one whole change made since (its bytes in the block) or as flushed.
    /// False means "look byte by byte", not "wrong".
    private func isExplained(
        _ block: Range<Int>, _ areaStart: UInt64, _ actual: UnsafeRawPointer,
        _ expected: UnsafeRawPointer
    ) -> Bool {
        var explained: [Range<Int>] = []
        for change in pending {
            let changeStart = Int(change.virtualByteOffset) - Int(areaStart)
            let overlap = block.clamped(to: changeStart..<(changeStart + change.bytes.count))
            guard !overlap.isEmpty else { continue }
            let matches = change.bytes.withUnsafeBytes { bytes in
                memcmp(
                    actual + overlap.lowerBound,
                    bytes.baseAddress! + (overlap.lowerBound - changeStart),
                    overlap.count) == 0
            }
            if matches { explained.append(overlap) }
        }
        var cursor = block.lowerBound
        for range in explained.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if range.lowerBound > cursor
                && memcmp(actual + cursor, expected + cursor, range.lowerBound - cursor) != 0
            {
                return false
            }
            cursor = max(cursor, range.upperBound)
        }
        return cursor >= block.upperBound
            || memcmp(actual + cursor, expected + cursor, block.upperBound - cursor) == 0
    }

    /// Whether a change made since the last flush put `value` at `virtualByteOffset`.
    private func isPending(_ virtualByteOffset: UInt64, _ value: UInt8) -> Bool {
        pending.contains { change in
            virtualByteOffset >= change.virtualByteOffset
                && virtualByteOffset < change.virtualByteOffset + UInt64(change.bytes.count)
                && change.bytes[Int(virtualByteOffset - change.virtualByteOffset)] == value
        }
    }

    func describe(_ virtualByteOffset: UInt64, area areaIndex: Int) -> String {
        let start = recording.workload.areas[areaIndex].lowerBound
        let newer = pending.filter {
            virtualByteOffset >= $0.virtualByteOffset
                && virtualByteOffset < $0.virtualByteOffset + UInt64($0.bytes.count)
        }.map { $0.bytes[Int(virtualByteOffset - $0.virtualByteOffset)] }
        return
            "flushed \(flushed[areaIndex][Int(virtualByteOffset - start)]), written since \(newer)"
    }
}

/// The subsets of `count` pieces a crash may keep, each in the order it is applied, duplicates
/// dropped: nothing and everything; for a window of at most `exhaustiveUpTo` pieces every subset
/// and `shuffleCount` reorderings of all of them; for a larger one `prefixCount` random prefixes
/// and `randomCount` random subsets in log order, then as many shuffled.
func crashOrders(
    count: Int, exhaustiveUpTo: Int, shuffleCount: Int, prefixCount: Int, randomCount: Int,
    generator: inout SplitMix64
) -> [[Int]] {
    var orders: [[Int]] = [[], Array(0..<count)]
    if count <= exhaustiveUpTo {
        for mask in 0..<(1 << count) { orders.append((0..<count).filter { mask & (1 << $0) != 0 }) }
        if count >= 2 {
            for _ in 0..<shuffleCount {
                orders.append(Array(0..<count).shuffled(using: &generator))
            }
        }
    } else {
        for _ in 0..<prefixCount { orders.append(Array(0..<Int(generator.next() % UInt64(count)))) }
        for shuffled in [false, true] {
            for _ in 0..<randomCount {
                let keepOneIn = 1 + generator.next() % 3
                var kept = (0..<count).filter { _ in generator.next() % (keepOneIn + 1) != 0 }
                if shuffled { kept.shuffle(using: &generator) }
                orders.append(kept)
            }
        }
    }
    var seen = Set<[Int]>()
    return orders.filter { seen.insert($0).inserted }
}
