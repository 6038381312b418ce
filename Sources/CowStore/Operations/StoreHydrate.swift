// `cowbd hydrate`: copies every base chunk the store does not hold into it, as hydrated
// chunks, so the store no longer needs its base. Resumable by construction: each pass starts
// from the store's bitmaps, and a flush every `flushByteCount` bytes (and every
// `flushIntervalSeconds`, for a slow base or a low rate) bounds what a kill loses.
// The order that makes a kill safe is the store's (docs/FORMAT.md, "Hydration").

import CowFormat
import CowSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Hydration of a whole store.
public enum StoreHydrate {
    /// Where a run is: `chunksPresent` of `chunksTotal` base chunks are in the store.
    public struct Progress: Sendable {
        public var chunksPresent: UInt64
        public var chunksTotal: UInt64
        /// Bytes copied from the base by this run.
        public var copiedByteCount: UInt64
    }

    /// What a run did.
    public struct Summary: Sendable {
        /// Chunks this run kept (those an earlier run kept are not counted).
        public var chunksCopied: UInt64
        /// Bytes this run read from the base.
        public var copiedByteCount: UInt64
        /// Hydrated chunks in the store now, and written ones.
        public var chunksHydrated: UInt64
        public var chunksWritten: UInt64
        public var isSelfContained: Bool
    }

    /// Bytes read from the base and kept per step: one read, one lock of its chunks.
    public static let stepByteCount: UInt64 = 1 << 20
    /// Bytes kept between flushes by default: what a kill can cost a rerun.
    public static let defaultFlushByteCount: UInt64 = 64 << 20
    /// Seconds between flushes at most, however few bytes were kept.
    public static let flushIntervalSeconds = 1.0

    /// Keeps every base chunk that `disk`'s store lacks, at most `rateBytesPerSecond` (nil: as
    /// fast as it goes), flushing every `flushByteCount` bytes and at the end, calling
    /// `progress` after each step.
    public static func run(
        _ disk: VirtualDisk, rateBytesPerSecond: UInt64? = nil,
        flushByteCount: UInt64 = defaultFlushByteCount,
        progress: (Progress) -> Void = { _ in }
    ) throws -> Summary {
        let store = disk.store
        let geometry = disk.geometry
        let chunksTotal = geometry.chunkCount(covering: store.header.baseByteCount)
        let stepChunkCount = max(1, stepByteCount >> geometry.shift)
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Int(stepChunkCount * geometry.chunkByteCount), alignment: 4096)
        defer { buffer.deallocate() }
        var summary = Summary(
            chunksCopied: 0, copiedByteCount: 0, chunksHydrated: 0, chunksWritten: 0,
            isSelfContained: false)
        var unflushedByteCount: UInt64 = 0
        let started = monotonicSeconds()
        var flushed = started
        var chunkIndex: UInt64 = 0
        while chunkIndex < chunksTotal {
            let run = store.presentRun(
                from: chunkIndex, limit: min(stepChunkCount, chunksTotal - chunkIndex))
            if !run.isPresent {
                let start = geometry.byteOffset(ofChunk: chunkIndex)
                let end = min(
                    geometry.byteOffset(ofChunk: chunkIndex + run.chunkCount), disk.byteCount)
                let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(end - start)])
                try disk.readBase(at: start, into: bytes)
                summary.chunksCopied += try disk.keepBaseChunks(
                    UnsafeRawBufferPointer(bytes), at: start)
                summary.copiedByteCount += end - start
                unflushedByteCount += end - start
                if unflushedByteCount >= flushByteCount
                    || monotonicSeconds() - flushed >= flushIntervalSeconds
                {
                    try disk.flush()
                    unflushedByteCount = 0
                    flushed = monotonicSeconds()
                }
                if let rateBytesPerSecond, rateBytesPerSecond > 0 {
                    pace(summary.copiedByteCount, rateBytesPerSecond, since: started)
                }
            }
            chunkIndex += run.chunkCount
            progress(
                Progress(
                    chunksPresent: chunkIndex, chunksTotal: chunksTotal,
                    copiedByteCount: summary.copiedByteCount))
        }
        try disk.flush()
        summary.chunksHydrated = store.hydratedChunkCount
        summary.chunksWritten = store.writtenChunkCount
        summary.isSelfContained = store.isSelfContained
        return summary
    }

    /// Sleeps until `byteCount` bytes since `started` are within the rate.
    private static func pace(
        _ byteCount: UInt64, _ rateBytesPerSecond: UInt64, since started: Double
    ) {
        let due = Double(byteCount) / Double(rateBytesPerSecond)
        let ahead = due - (monotonicSeconds() - started)
        guard ahead > 0 else { return }
        usleep(useconds_t(min(ahead, 10) * 1_000_000))
    }
}
