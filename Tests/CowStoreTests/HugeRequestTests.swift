// WRITE_ZEROES and TRIM over a whole 1 TiB disk: bits are set a word at a time, the bitmap lock
// is taken in bounded runs so another reader keeps going, and memory stays near the bitmap's
// size. Times are printed; only generous bounds are asserted (machines differ).

import CowFormat
import CowStore
import Foundation
import Synchronization
import SystemPackage
import Testing

/// The process's resident bytes (/proc/self/statm).
private func residentByteCount() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else {
        return 0
    }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
    return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
}

/// Reads 4 KiB at seeded random offsets until stopped; returns each read's latency.
private final class BackgroundReader: Sendable {
    private let latencies = Mutex<[Duration]>([])
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)

    init(_ disk: VirtualDisk) {
        Thread.detachNewThread { [self] in
            var generator = SplitMix64(seed: 99)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer {
                buffer.deallocate()
                done.signal()
            }
            let clock = ContinuousClock()
            // Bounded: a few hundred thousand reads at most.
            for _ in 0..<500_000 where !stopped.load(ordering: .acquiring) {
                let offset = (generator.next() % (disk.byteCount / 4096)) * 4096
                let start = clock.now
                do { try disk.read(at: offset, into: buffer) } catch { return }
                let latency = clock.now - start
                latencies.withLock { $0.append(latency) }
            }
        }
    }

    /// Stops the reader and returns its latencies, sorted.
    func stop() -> [Duration] {
        stopped.store(true, ordering: .releasing)
        done.wait()
        return latencies.withLock { $0.sorted() }
    }
}

@Test func writeZeroesAndTrimOverAWhole1TiBDiskIn4GiBRequestsFinishInSeconds() throws {
    let scratch = try Scratch(onDisk: true)
    let diskByteCount: UInt64 = 1 << 40
    let requestByteCount: UInt64 = 4 << 30
    _ = FileManager.default.createFile(atPath: scratch.path("base"), contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.path("base")))
    try handle.truncate(atOffset: diskByteCount)
    try handle.close()
    try createStore(at: scratch.path("cow"), base: scratch.path("base"))
    let disk = try VirtualDisk.open(storePath: FilePath(scratch.path("cow")))
    defer { disk.close() }
    let chunkScratch = disk.makeScratch()
    let residentBefore = residentByteCount()
    let reader = BackgroundReader(disk)
    let clock = ContinuousClock()

    let zeroTime = try clock.measure {
        for offset in stride(from: 0, to: diskByteCount, by: Int(requestByteCount)) {
            try disk.writeZeroes(at: offset, byteCount: requestByteCount, scratch: chunkScratch)
        }
    }
    #expect(disk.store.writtenChunkCount == diskByteCount / 4096)
    let trimTime = try clock.measure {
        for offset in stride(from: 0, to: diskByteCount, by: Int(requestByteCount)) {
            try disk.trim(at: offset, byteCount: requestByteCount)
        }
    }
    let flushTime = try clock.measure { try disk.flush() }
    let latencies = reader.stop()
    let residentGrowth = residentByteCount() - min(residentBefore, residentByteCount())
    let p99 = latencies.isEmpty ? .zero : latencies[latencies.count * 99 / 100]
    print(
        "1 TiB in 4 GiB requests: write-zeroes \(zeroTime), trim \(trimTime), flush \(flushTime);"
            + " \(latencies.count) background 4 KiB reads, p99 \(p99);"
            + " resident growth \(residentGrowth >> 20) MiB (bitmap 32 MiB)")
    #expect(zeroTime < .seconds(120))
    #expect(trimTime < .seconds(120))
    #expect(p99 < .seconds(1))
    #expect(residentGrowth < (32 + 256) << 20)
    #expect(
        try disk.readBytes(at: diskByteCount - 4096, count: 4096)
            == [UInt8](repeating: 0, count: 4096))
}
