// Every crash state of seeded runs, enumerated at each sync point (CrashStateExplorer.swift):
// check clean or only leaks, flushed bytes exact, later bytes old or new. The default budget
// keeps the suite short; COWBD_CRASH_STATES=long (or a count) explores more.

import CowStore
import Foundation
import Testing

/// Records `workload`, explores its crash states and prints the figures.
private func exploreCrashStates(_ workload: CrashWorkload) throws {
    let started = ContinuousClock.now
    let budget = CrashStateBudget.fromEnvironment()
    var workload = workload
    workload.operationCount = budget.operationCount
    let recording = try workload.record()
    let result = try CrashStateExplorer(recording: recording, budget: budget).explore()
    let seconds = (ContinuousClock.now - started).components.seconds
    print(
        "crash states, seed \(workload.seed), \(workload.chunkByteCount / 1024) KiB chunks: "
            + "\(result.stateCount) explored at \(result.syncPointCount) sync points "
            + "(\(recording.events.count) events, \(recording.operations.count) operations), "
            + "\(result.wrongByteCount) wrong bytes, \(result.brokenStateCount) broken, "
            + "\(result.leakStateCount) with leaks, \(result.recoveryCount) written to after, "
            + "\(seconds) s")
    for failure in result.failures { Issue.record("\(failure)") }
    #expect(result.wrongByteCount == 0)
    #expect(result.brokenStateCount == 0)
    #expect(result.stateCount > 0)
}

/// 4 KiB chunks over a disk that spans two bitmap pages (one chunk bitmap page covers 128 MiB),
/// so one flush writes two pages that a crash can keep or drop apart; with checkpoints.
@Test func everyCrashStateOfA4KiBChunkStoreReadsAsFlushedOrWritten() throws {
    let mebibyte: UInt64 = 1 << 20
    let virtualByteCount = 129 * mebibyte + 777
    try exploreCrashStates(
        CrashWorkload(
            seed: 11, chunkByteCount: 4096, baseByteCount: 512 << 10 + 321,
            virtualByteCount: virtualByteCount,
            areas: [
                0..<(640 << 10), (128 * mebibyte - 64 << 10)..<(128 * mebibyte + 64 << 10),
                (129 * mebibyte - 64 << 10)..<virtualByteCount,
            ],
            operationCount: 0, withCheckpoints: true))
}

/// 16 KiB chunks, so writes copy up partial chunks from the base, over a disk grown past it.
@Test func everyCrashStateOfA16KiBChunkStoreReadsAsFlushedOrWritten() throws {
    let virtualByteCount: UInt64 = 1 << 20 + 777
    try exploreCrashStates(
        CrashWorkload(
            seed: 12, chunkByteCount: 16384, baseByteCount: 512 << 10 + 321,
            virtualByteCount: virtualByteCount, areas: [0..<virtualByteCount],
            operationCount: 0, withCheckpoints: false))
}

/// The explorer can fail: the same kind of run replayed as if the store had not synced its data
/// before writing the bitmap (its fsyncs dropped from the log) must show wrong bytes.
@Test func crashStatesOfAStoreThatSkipsItsDataSyncShowWrongBytes() throws {
    let virtualByteCount: UInt64 = 1 << 20 + 777
    let recording = try CrashWorkload(
        seed: 13, chunkByteCount: 16384, baseByteCount: 512 << 10 + 321,
        virtualByteCount: virtualByteCount, areas: [0..<virtualByteCount],
        operationCount: 40, withCheckpoints: false
    ).record()
    var explorer = CrashStateExplorer(recording: recording, budget: .standard)
    explorer.ignoresDataSyncs = true
    let result = try explorer.explore()
    print(
        "crash states of a store without its data fsync: \(result.stateCount) explored, "
            + "\(result.wrongByteCount) wrong bytes, \(result.brokenStateCount) broken; first: "
            + (result.failures.first ?? "none"))
    #expect(result.wrongByteCount > 0)
}
