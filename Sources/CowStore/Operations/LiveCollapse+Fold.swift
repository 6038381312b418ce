// The folded layer of a live collapse: one frozen store holding the union of the layers folded
// (upper wins) over the layer under them, read through the served chain (read-only, shared
// locks) and written whole (AtomicFile: temporary, fsync, link, folder fsync). Throttled and
// cancellable between pieces. Rebinding the served store is VirtualDisk+LowerSwap.swift's.

import CowFormat
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension LiveCollapse {
    /// The layers a collapse folds, from the served chain: `upper` is the first layer under
    /// the served store, `depth` layers from it down are folded, `lower` is what is left
    /// under them.
    struct Fold {
        let upper: VirtualDisk
        let depth: Int
        /// The last layer folded: its header names `lower` (size, fingerprint, path).
        let deepest: VirtualDisk
        let lower: any BlockSource

        /// The folded layers of `chain` (the served store's lower), or why they cannot be.
        init(chain: any BlockSource, depth: Int, storePath: FilePath) throws {
            var layers: [VirtualDisk] = []
            var source = chain
            while layers.count < depth, let image = source as? VirtualDiskImage {
                layers.append(image.disk)
                source = image.disk.base
            }
            guard depth >= 1, let first = layers.first, let last = layers.last,
                layers.count == depth
            else {
                throw StoreError.invalidArgument(
                    "\(storePath): collapse --depth \(depth): there are \(layers.count) stores "
                        + "under it (the bottom image is not folded)")
            }
            upper = first
            deepest = last
            lower = source
            self.depth = depth
        }

        /// Bytes of the upper disk that some folded layer holds, in whole chunks of `upper`.
        func heldRuns() throws -> [Range<UInt64>] {
            var runs: [Range<UInt64>] = []
            var cursor: UInt64 = 0
            let geometry = upper.geometry
            while cursor < upper.byteCount {
                let maxExtentCount = 1024
                let extents = try upper.extents(
                    at: cursor, byteCount: upper.byteCount - cursor,
                    maxExtentCount: maxExtentCount)
                for extent in extents {
                    let end = cursor + extent.byteCount
                    if extent.depth >= 1 && extent.depth <= UInt32(depth) {
                        let start = geometry.byteOffset(
                            ofChunk: geometry.chunkIndex(containing: cursor))
                        let chunkEnd = min(
                            upper.byteCount,
                            geometry.byteOffset(
                                ofChunk: geometry.chunkIndex(containing: end - 1) + 1))
                        if let last = runs.last, last.upperBound >= start {
                            runs[runs.count - 1] = last.lowerBound..<max(last.upperBound, chunkEnd)
                        } else {
                            runs.append(start..<chunkEnd)
                        }
                    }
                    cursor = end
                }
            }
            return runs
        }

        /// The header of the folded layer at `path`: the upper's geometry and size, the
        /// deepest's binding to `lower` (its path recorded from `path`'s folder), frozen.
        func header(for path: FilePath, createdUnixSeconds: UInt64) throws -> StoreHeader {
            let model = deepest.store.currentHeader
            let resolved = absolutePath(lower.path.string)
            let given =
                NBDBaseImage.isURI(model.basePathGiven)
                ? model.basePathGiven : VirtualDisk.recordedPath(of: resolved, from: path)
            do {
                var header = try StoreHeader(
                    geometry: upper.geometry, virtualByteCount: upper.byteCount,
                    baseByteCount: model.baseByteCount, baseFingerprint: model.baseFingerprint,
                    fingerprintScheme: model.fingerprintScheme, basePathGiven: given,
                    basePathResolved: NBDBaseImage.isURI(given) ? given : resolved.string,
                    createdUnixSeconds: createdUnixSeconds)
                header.setFrozen(true)
                return header
            } catch {
                throw StoreError.format(path: path, error)
            }
        }
    }

    /// Writes the folded layer to `path` (which must not exist), reporting bytes copied to
    /// `job`, at most `job.rateBytesPerSecond`, stopping with `cancelled` when asked.
    static func writeFoldedLayer(_ fold: Fold, to path: FilePath, job: LiveCollapse.Job) throws {
        let runs = try fold.heldRuns()
        job.setTotal(runs.reduce(0) { $0 + UInt64($1.count) })
        let header = try fold.header(for: path, createdUnixSeconds: UInt64(max(0, time(nil))))
        let bitmap = ChunkBitmap(chunkCount: header.chunkCount)
        let pieceByteCount = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: pieceByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        try AtomicFile.write(to: path, replacing: false) { descriptor in
            try descriptor.setByteCount(header.dataByteOffset + header.virtualByteCount)
            for run in runs {
                var cursor = run.lowerBound
                while cursor < run.upperBound {
                    try job.checkNotCancelled()
                    let count = Int(min(UInt64(pieceByteCount), run.upperBound - cursor))
                    let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
                    try fold.upper.read(at: cursor, into: piece)
                    // All-zero bytes stay a hole: a set bit over a hole reads as zeros.
                    if piece.contains(where: { $0 != 0 }) {
                        try descriptor.writeFully(
                            at: header.dataByteOffset + cursor, from: UnsafeRawBufferPointer(piece))
                    }
                    let chunks =
                        header.geometry.chunkIndex(
                            containing: cursor)..<(header.geometry
                        .chunkIndex(containing: cursor + UInt64(count) - 1) + 1)
                    _ = bitmap.set(chunks)
                    cursor += UInt64(count)
                    job.advance(by: UInt64(count))
                }
            }
            try writeBitmap(bitmap, at: header.bitmapByteOffset, to: descriptor)
            let bytes = header.encoded()
            try bytes.withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
        }
    }

    private static func writeBitmap(
        _ bitmap: ChunkBitmap, at byteOffset: UInt64, to descriptor: FileDescriptor
    ) throws {
        let page = UnsafeMutableRawBufferPointer.allocate(
            byteCount: ChunkBitmap.pageByteCount, alignment: 4096)
        defer { page.deallocate() }
        for (pageIndex, _) in bitmap.allocatedPages() {
            bitmap.copyPage(pageIndex, into: page)
            try descriptor.writeFully(
                at: byteOffset + UInt64(pageIndex * ChunkBitmap.pageByteCount),
                from: UnsafeRawBufferPointer(page))
        }
    }
}
