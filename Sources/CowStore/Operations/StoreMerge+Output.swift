// Flattening the virtual disk into a new raw image (`merge --output`): written under a
// temporary name, synced and renamed, sparse where the disk reads as zeros. Base and store are
// only read.

import CowFormat
import SystemPackage

extension StoreMerge {
    func flatten(into path: FilePath, overwrite: Bool, progress: (UInt64, UInt64) -> Void) throws
        -> Summary
    {
        let disk = VirtualDisk(store: store, base: base, logger: logger)
        let size = disk.byteCount
        var summary = Summary(
            targetPath: absolutePath(path.string).string, chunkCount: store.writtenChunkCount,
            dataByteCount: 0,
            holeByteCount: 0, resumed: false)
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Self.copyByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        try AtomicFile.write(to: path, replacing: overwrite) { output in
            try output.setByteCount(size)
            var cursor: UInt64 = 0
            while cursor < size {
                let extents = try disk.extents(
                    at: cursor, byteCount: min(size - cursor, 256 << 20), maxExtentCount: 4096)
                for extent in extents {
                    if extent.readsAsZeros {
                        summary.holeByteCount += extent.byteCount
                    } else {
                        try copy(
                            disk, from: cursor, byteCount: extent.byteCount, to: output,
                            buffer: buffer, summary: &summary)
                    }
                    cursor += extent.byteCount
                    progress(cursor, size)
                }
            }
        }
        return summary
    }

    /// Copies a data extent, leaving holes where a whole piece reads as zeros.
    private func copy(
        _ disk: VirtualDisk, from start: UInt64, byteCount: UInt64, to output: FileDescriptor,
        buffer: UnsafeMutableRawBufferPointer, summary: inout Summary
    ) throws {
        var cursor = start
        let end = start + byteCount
        while cursor < end {
            let count = Int(min(UInt64(buffer.count), end - cursor))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try disk.read(at: cursor, into: piece)
            if piece.allSatisfy({ $0 == 0 }) {
                summary.holeByteCount += UInt64(count)
            } else {
                try output.writeFully(at: cursor, from: UnsafeRawBufferPointer(piece))
                summary.dataByteCount += UInt64(count)
            }
            cursor += UInt64(count)
        }
    }
}
