// The steps of building a folded layer: finding what the folded layers hold, copying it into
// the new store through the store's own write path (so its chunk data is durable before its
// bits), and the file's life: its temporary, an output left by an interrupted run, its name.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension LayerFold {
    /// Calls `body` with each extent of the top's lower disk that a folded layer holds (depth 1
    /// to `depth` as seen from the first folded layer), in order.
    func forEachFoldedExtent(_ body: (UInt64, SourceExtent) throws -> Void) throws {
        let size = firstDisk.byteCount
        var cursor: UInt64 = 0
        while cursor < size {
            let extents = try firstDisk.extents(
                at: cursor, byteCount: min(size - cursor, 256 << 20), maxExtentCount: 4096)
            for extent in extents {
                if extent.depth >= 1 && extent.depth <= UInt32(depth) {
                    try body(cursor, extent)
                }
                cursor += extent.byteCount
            }
        }
    }

    /// Copies every folded extent into `output` in pieces of at most `pieceByteCount`, calling
    /// `afterPiece` with each piece's size and the folded bytes copied so far. Pieces that read as zeros become punched chunks the
    /// store holds. A piece that covers part of a chunk is completed by `output`'s copy-up from
    /// the lower layer, which reads there what the top's lower disk reads: bytes no folded layer
    /// holds come from the lower layer (or are zeros no layer holds, which it reads as zeros).
    func copyFoldedExtents(
        into output: VirtualDisk, summary: inout Summary,
        afterPiece: (UInt64, UInt64) throws -> Void
    ) throws {
        let scratch = output.makeScratch()
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Self.pieceByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        try forEachFoldedExtent { start, extent in
            var cursor = start
            let end = start + extent.byteCount
            while cursor < end {
                // Pieces end on 1 MiB boundaries, so whole chunks go in one piece.
                let pieceEnd = min(
                    end, (cursor / UInt64(Self.pieceByteCount) + 1) * UInt64(Self.pieceByteCount))
                let count = pieceEnd - cursor
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(count)])
                var readsAsZeros = extent.readsAsZeros
                if !readsAsZeros {
                    try firstDisk.read(at: cursor, into: piece)
                    readsAsZeros = piece.allSatisfy { $0 == 0 }
                }
                if readsAsZeros {
                    try output.writeZeroes(
                        at: cursor, byteCount: count, mayPunch: true, scratch: scratch)
                } else {
                    try output.write(
                        at: cursor, from: UnsafeRawBufferPointer(piece), scratch: scratch)
                    summary.dataByteCount += count
                }
                summary.foldedByteCount += count
                cursor = pieceEnd
                try afterPiece(count, summary.foldedByteCount)
            }
        }
    }

    /// Removes a temporary that a killed build left; refuses one another process still holds
    /// (its exclusive lock: a build under way).
    func removeStaleTemporary(_ temporaryPath: FilePath) throws {
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(temporaryPath, .readOnly, options: [.closeOnExec])
        } catch Errno.noSuchFileOrDirectory {
            return
        } catch let errno as Errno {
            throw StoreError.open(path: temporaryPath, errno)
        }
        defer { try? descriptor.close() }
        let isFree: Bool
        do { isFree = try descriptor.tryLock(exclusive: true) } catch {
            throw StoreError.io(path: temporaryPath, operation: "flock", byteOffset: 0, error)
        }
        guard isFree else {
            throw StoreError.invalidArgument(
                "\(outputPath): another cowbd is building it (\(temporaryPath) is locked); "
                    + "refusing to start a second build")
        }
        guard unlink(temporaryPath.string) == 0 else {
            throw StoreError.io(
                path: temporaryPath, operation: "unlink", byteOffset: 0, Errno(rawValue: errno))
        }
    }

    /// Whether `outputPath` is already this fold (an interrupted run put it in place): a
    /// frozen store of the expected size and fingerprint whose lower is the same file as
    /// `lowerPath`. False if it does not exist; throws `StoreError.exists` if it is anything
    /// else.
    func isExistingFold() throws -> Bool {
        let identity: FileIdentity
        do { identity = try FileIdentity(of: outputPath) } catch StoreError.open(
            _, .noSuchFileOrDirectory)
        {
            return false
        }
        let layers = foldedLayerPaths + [topPath]
        if try layers.contains(where: { try FileIdentity(of: $0) == identity }) {
            throw StoreError.invalidArgument(
                "\(outputPath): is one of the layers of the chain; give a new file's name")
        }
        guard (try? BaseLocator.leadingBytes(of: outputPath)) == StoreHeader.magic else {
            throw StoreError.exists(path: outputPath)
        }
        let store = try StoreFile(path: outputPath, access: .sharedRead)
        defer { store.close() }
        let header = store.header
        let lowerIdentity = try FileIdentity(of: lowerPath)
        let boundToLower =
            BaseLocator.candidatePaths(for: header, storePath: outputPath)
            .lazy.compactMap { try? FileIdentity(of: FilePath($0)) }.first == lowerIdentity
        guard header.isFrozen, header.merge == nil, boundToLower,
            header.virtualByteCount == expectedByteCount
        else { throw StoreError.exists(path: outputPath) }
        let base = try BaseLocator.openBase(
            for: header, storePath: outputPath, options: .quiet)
        try BaseLocator.verify(base, against: header, storePath: outputPath)
        let disk = VirtualDisk(store: store, base: base, logger: store.logger)
        guard try disk.fingerprint() == expectedFingerprint else {
            throw StoreError.exists(path: outputPath)
        }
        return true
    }

    /// Writes the new layer's empty store at `path`, whole ("Files written whole"): frozen
    /// from the start (nothing else may open it to write), the lower recorded by name when it
    /// lies in the same folder, so the chain can be moved as a folder.
    func writeEmptyLayer(at path: FilePath, createdUnixSeconds: UInt64) throws {
        let folder = absolutePath(AtomicFile.folder(of: outputPath).string)
        let given =
            lowerPath.removingLastComponent() == folder
            ? (lowerPath.lastComponent?.string ?? lowerPath.string) : lowerPath.string
        var header: StoreHeader
        do {
            header = try StoreHeader(
                geometry: geometry, virtualByteCount: expectedByteCount,
                baseByteCount: lower.byteCount, baseFingerprint: try lower.fingerprint(),
                fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: given,
                basePathResolved: lowerPath.string, createdUnixSeconds: createdUnixSeconds)
        } catch let error as FormatError {
            throw StoreError.format(path: outputPath, error)
        }
        header.setFrozen(true)
        try AtomicFile.write(to: path, replacing: true) { descriptor in
            try descriptor.setByteCount(header.dataByteOffset + header.virtualByteCount)
            let bytes = header.encoded()
            try bytes.withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
        }
    }

    /// Gives the built layer its name: `link` (which fails rather than replace a file), then
    /// the temporary name goes, then the folder is fsynced. A crash between the two leaves the
    /// output in place and a second name of it, which the next run removes.
    func place(_ temporaryPath: FilePath) throws {
        guard link(temporaryPath.string, outputPath.string) == 0 else {
            let error = Errno(rawValue: errno)
            _ = unlink(temporaryPath.string)
            if error == .fileExists { throw StoreError.exists(path: outputPath) }
            throw StoreError.io(path: outputPath, operation: "link", byteOffset: 0, error)
        }
        _ = unlink(temporaryPath.string)
        try AtomicFile.syncFolder(AtomicFile.folder(of: outputPath), after: outputPath)
    }
}
