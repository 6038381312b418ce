// `cowbd export-diff`: the changes a store holds, as a native diff, an rbd diff v1 stream or a
// list of extents. Walks only the set runs of the chunk bitmap and, inside them, the store
// file's data and holes (SEEK_DATA/SEEK_HOLE), so the cost follows the change, not the disk.
// The base is opened only to record an end checkpoint (it takes the disk's fingerprint);
// otherwise a diff is the store's content alone.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One changed stretch of the disk.
public struct ChangedExtent: Equatable, Sendable {
    public var byteOffset: UInt64
    public var byteCount: UInt64
    /// Reads as zeros (trimmed or zeroed in the store).
    public var isZero: Bool
    /// Changed since the checkpoint but held by a lower layer: a live snapshot froze the
    /// change into the layer under the store, and the store's checkpoint kept counting it.
    public var isInLower = false
}

/// A diff export of one store.
public final class StoreDiffExport {
    public enum Format: String, Sendable, CaseIterable {
        case native, rbd, json
    }

    /// What an export wrote.
    public struct Summary: Sendable {
        public var extentCount: UInt64 = 0
        public var dataByteCount: UInt64 = 0
        public var zeroByteCount: UInt64 = 0
        public var streamByteCount: UInt64 = 0
        /// Live: chunk bytes copied before writes changed them during the export.
        public var copiedBeforeWriteByteCount: UInt64 = 0

        public init() {}
    }

    /// Largest data record written: bounds the buffer, and the reader's.
    static let maxRecordByteCount = 1 << 20

    public let store: StoreFile
    /// For an incremental diff: the checkpoint it starts from, and its bitmap's slot.
    public let since: (slot: Int, checkpoint: Checkpoint)?
    /// Whether every chunk the store holds counts as changed since the checkpoint: the last
    /// writer did not close the store cleanly, so the checkpoint's bitmap may miss writes.
    public let countsEveryHeldChunk: Bool

    /// The checkpoint recorded once the diff is written (`export-diff --to`), named in an rbd
    /// diff's `t` record; nil when the export records none.
    public let endCheckpoint: Checkpoint?
    /// Whether `write` recorded `endCheckpoint` in the store.
    public private(set) var recordedEndCheckpoint = false
    /// Opens the store's lower layer, for chunks changed since the checkpoint that it holds.
    private let openLower: () throws -> any BlockSource
    private var lower: (any BlockSource)?
    /// For a live export: the served disk, and the chunks to read as of the export's instant
    /// (VirtualDisk+LiveExport.swift).
    private let live: (disk: VirtualDisk, freeze: ExportFreeze)?

    /// Opens the store with a shared lock: refused while it is served or merged (they hold the
    /// exclusive lock), so the bits and bytes read are a consistent, flushed state. With
    /// `sinceCheckpoint`, the diff holds only what changed since that checkpoint.
    ///
    /// With `recordingCheckpoint`, the store is opened for writing instead (the exclusive
    /// lock, its base opened with `options` for the disk's fingerprint), and `write` records a
    /// checkpoint of that name once the diff is written: nothing can change in between, so
    /// the checkpoint marks exactly the state the diff ends at, as `rbd export-diff` of a
    /// snapshot does. A name in use, or a full checkpoint table, is refused here, before
    /// anything is written.
    public init(
        storePath: FilePath, sinceCheckpoint: String? = nil, recordingCheckpoint: String? = nil,
        options: BaseOpenOptions = .quiet
    ) throws {
        var disk: VirtualDisk?
        var lowerOptions = options
        lowerOptions.layersAbove.append(
            LayerAbove(path: storePath, identity: try FileIdentity(of: storePath)))
        let openLowerOptions = lowerOptions
        if let name = recordingCheckpoint {
            if let problem = Checkpoint.problem(withName: name) {
                throw StoreError.invalidArgument("\(name): \(problem)")
            }
            let opened = try VirtualDisk.open(storePath: storePath, options: options)
            disk = opened
            store = opened.store
        } else {
            store = try StoreFile(path: storePath, access: .sharedRead)
        }
        if let merge = store.header.merge {
            store.close()
            throw StoreError.mergeInProgress(path: storePath, target: merge.targetPath)
        }
        live = nil
        openLower = { [store] in
            if let disk { return disk.base }
            return try VirtualDisk.openBase(
                of: store, storePath: storePath, options: openLowerOptions)
        }
        do {
            let table = store.checkpointTable ?? CheckpointTable()
            since = try Self.checkpoint(named: sinceCheckpoint, in: table, storePath: storePath)
            // A writer's open already counted every held chunk as changed if the last writer
            // crashed (StoreFile+Checkpoints.swift); a reader must do it itself.
            countsEveryHeldChunk = disk == nil && since != nil && table.isOpen
            endCheckpoint = try disk.map { disk in
                try Self.endCheckpoint(
                    named: recordingCheckpoint ?? "", of: disk, table: table,
                    storePath: storePath)
            }
        } catch {
            store.close()
            throw error
        }
    }

    /// A live export of the served `disk` (docs/CONTROL.md, "Live export-diff"): the diff is
    /// the disk at this instant, taken behind the write barrier (with checkpoint
    /// `recordingCheckpoint` recorded at it), however clients write while it is written: a
    /// write to a chunk the export has still to read copies it first. `close` ends that.
    public init(
        live disk: VirtualDisk, sinceCheckpoint: String? = nil, recordingCheckpoint: String? = nil
    ) throws {
        store = disk.store
        let storePath = store.path
        guard !disk.isCopyingOnRead else {
            throw StoreError.invalidArgument(
                "\(storePath): served --copy-on-read (reads change the store): no live export-diff")
        }
        let table = store.checkpointTable ?? CheckpointTable()
        since = try Self.checkpoint(named: sinceCheckpoint, in: table, storePath: storePath)
        countsEveryHeldChunk = false
        if let recordingCheckpoint {
            guard !disk.isReadOnly else {
                throw StoreError.invalidArgument(
                    "\(storePath): served --read-only: --to cannot record a checkpoint")
            }
            if let problem = Checkpoint.problem(withName: recordingCheckpoint) {
                throw StoreError.invalidArgument("\(recordingCheckpoint): \(problem)")
            }
        }
        let begun = try disk.beginExport(
            since: since?.slot, recordingCheckpointNamed: recordingCheckpoint)
        endCheckpoint = begun.endCheckpoint
        recordedEndCheckpoint = begun.endCheckpoint != nil
        live = (disk, begun.freeze)
        openLower = { disk.base }
    }

    /// The checkpoint `name` (nil for none) and its slot; throws if the store has none of
    /// that name.
    private static func checkpoint(
        named name: String?, in table: CheckpointTable, storePath: FilePath
    ) throws -> (slot: Int, checkpoint: Checkpoint)? {
        guard let name else { return nil }
        guard let slot = table.slot(named: name), let checkpoint = table.slots[slot] else {
            let names = table.checkpoints.map(\.checkpoint.name)
            throw StoreError.invalidArgument(
                "\(storePath): no checkpoint named \(name) ("
                    + (names.isEmpty
                        ? "the store has none" : "it has: " + names.joined(separator: ", "))
                    + ")")
        }
        return (slot, checkpoint)
    }

    /// The checkpoint the export will record: refused if `name` is in use or every slot is.
    private static func endCheckpoint(
        named name: String, of disk: VirtualDisk, table: CheckpointTable, storePath: FilePath
    ) throws -> Checkpoint {
        guard table.slot(named: name) == nil else {
            throw StoreError.invalidArgument(
                "\(storePath): a checkpoint named \(name) exists already")
        }
        guard table.slots.contains(where: { $0 == nil }) else {
            throw StoreError.invalidArgument(
                "\(storePath): the store holds \(CheckpointTable.slotCount) checkpoints, the "
                    + "most it can; delete one first (cowbd checkpoint --delete)")
        }
        return Checkpoint(
            name: name, id: UInt64.random(in: 1...UInt64.max),
            createdUnixSeconds: UInt64(max(0, time(nil))),
            diskFingerprint: try disk.fingerprint())
    }

    /// Deletes the end checkpoint `write` recorded: for a caller whose own step after the
    /// write failed (placing the file), so the failed export leaves the store as it was.
    public func forgetEndCheckpoint() throws {
        guard let endCheckpoint, recordedEndCheckpoint else { return }
        if let live {
            try live.disk.deleteCheckpoint(named: endCheckpoint.name)
        } else {
            try store.deleteCheckpoint(named: endCheckpoint.name)
        }
        recordedEndCheckpoint = false
    }

    /// Closes the store; a live export ends its copy-before-write instead (the server keeps
    /// the store).
    public func close() {
        guard let live else { return store.close() }
        live.disk.endExport()
    }

    /// Calls `visit` with each changed extent in ascending order; adjacent extents of the same
    /// kind are joined.
    public func forEachChangedExtent(_ visit: (ChangedExtent) throws -> Void) throws {
        let header = store.header
        var pending: ChangedExtent?
        func emit(_ extent: ChangedExtent) throws {
            if var last = pending, last.isZero == extent.isZero,
                last.isInLower == extent.isInLower,
                last.byteOffset + last.byteCount == extent.byteOffset
            {
                last.byteCount += extent.byteCount
                pending = last
                return
            }
            if let last = pending { try visit(last) }
            pending = extent
        }
        if let live {
            // The chunks fixed at the export's instant, all read as data.
            let exportSet = live.freeze.exportSet
            var chunkIndex: UInt64 = 0
            while chunkIndex < exportSet.chunkCount {
                let run = exportSet.run(from: chunkIndex, limit: exportSet.chunkCount - chunkIndex)
                if run.isSet {
                    let start = header.geometry.byteOffset(ofChunk: chunkIndex)
                    let end = min(
                        header.virtualByteCount,
                        header.geometry.byteOffset(ofChunk: chunkIndex + run.chunkCount))
                    try emit(
                        ChangedExtent(byteOffset: start, byteCount: end - start, isZero: false))
                }
                chunkIndex += run.chunkCount
            }
            if let last = pending { try visit(last) }
            return
        }
        guard let since, !countsEveryHeldChunk else {
            try store.forEachHeldRun { held in
                let start = header.geometry.byteOffset(ofChunk: held.lowerBound)
                let end = min(
                    header.virtualByteCount, header.geometry.byteOffset(ofChunk: held.upperBound))
                try walkStore(from: start, to: end, emit)
            }
            if let last = pending { try visit(last) }
            return
        }
        // Changed since the checkpoint: held chunks from the store, the rest from the layer
        // below (changes a live snapshot froze there since the checkpoint).
        var chunkIndex: UInt64 = 0
        let chunkCount = header.chunkCount
        while chunkIndex < chunkCount {
            let run = store.changedRun(
                slot: since.slot, from: chunkIndex, limit: chunkCount - chunkIndex)
            defer { chunkIndex += run.chunkCount }
            guard run.isSet else { continue }
            var cursor = chunkIndex
            while cursor < chunkIndex + run.chunkCount {
                let held = store.heldRun(from: cursor, limit: chunkIndex + run.chunkCount - cursor)
                let start = header.geometry.byteOffset(ofChunk: cursor)
                let end = min(
                    header.virtualByteCount,
                    header.geometry.byteOffset(ofChunk: cursor + held.chunkCount))
                if held.isHeld {
                    try walkStore(from: start, to: end, emit)
                } else {
                    try emit(
                        ChangedExtent(
                            byteOffset: start, byteCount: end - start, isZero: false,
                            isInLower: true))
                }
                cursor += held.chunkCount
            }
        }
        if let last = pending { try visit(last) }
    }

    /// Splits `start..<end` (held by the store) into data and holes of the data region.
    private func walkStore(
        from start: UInt64, to end: UInt64, _ emit: (ChangedExtent) throws -> Void
    ) throws {
        var cursor = start
        while cursor < end {
            var extent = ChangedExtent(byteOffset: cursor, byteCount: end - cursor, isZero: false)
            do {
                let run = try store.dataRun(from: cursor, end: end)
                extent.isZero = run.isHole
                extent.byteCount = run.end - cursor
            } catch {
                // No SEEK_DATA here: everything the store holds counts as data.
            }
            try emit(extent)
            cursor += extent.byteCount
        }
    }

    /// Writes the diff in `format` to `descriptor` (a file, a pipe or stdout), named `name` in
    /// errors, then records the end checkpoint if there is one. `progress` gets (data bytes
    /// done, 0) now and then.
    public func write(
        format: Format, to descriptor: FileDescriptor, name: String,
        progress: (UInt64, UInt64) -> Void = { _, _ in }
    ) throws -> Summary {
        try write(format: format, DiffOutput(descriptor: descriptor, name: name), progress)
    }

    /// Writes the diff like `write(format:to:name:)`, handing it to `sink` in pieces of at
    /// most 1 MiB (a live export streamed to its client over the control socket).
    public func write(
        format: Format, name: String, sink: @escaping (UnsafeRawBufferPointer) throws -> Void
    ) throws -> Summary {
        try write(format: format, DiffOutput(name: name, sink: sink)) { _, _ in }
    }

    private func write(
        format: Format, _ output: DiffOutput, _ progress: (UInt64, UInt64) -> Void
    ) throws -> Summary {
        var summary = Summary()
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Self.maxRecordByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        try writePreamble(format: format, output)
        let recordChecksum = DiffChecksum()
        try forEachChangedExtent { extent in
            if format == .json {
                let line =
                    (summary.extentCount == 0 ? "\n" : ",\n")
                    + "  {\"offset\": \(extent.byteOffset), \"length\": \(extent.byteCount), "
                    + "\"zero\": \(extent.isZero)}"
                try output.append(Array(line.utf8))
            } else if extent.isZero {
                try writeZero(extent, format: format, output, recordChecksum)
            }
            if format == .json || extent.isZero {
                summary.extentCount += 1
                if extent.isZero {
                    summary.zeroByteCount += extent.byteCount
                } else {
                    summary.dataByteCount += extent.byteCount
                }
                return
            }
            var cursor = extent.byteOffset
            let end = extent.byteOffset + extent.byteCount
            while cursor < end {
                let count = Int(min(UInt64(Self.maxRecordByteCount), end - cursor))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
                if let live {
                    let geometry = store.header.geometry
                    try live.freeze.read(
                        geometry.chunkIndex(
                            containing: cursor)..<(geometry.chunkIndex(
                                containing: cursor + UInt64(count) - 1) + 1),
                        of: live.disk, into: piece)
                } else if extent.isInLower {
                    try readLower(at: cursor, into: piece)
                } else {
                    try store.readBytes(at: cursor, into: piece)
                }
                try writeData(
                    at: cursor, UnsafeRawBufferPointer(piece), format: format, output,
                    recordChecksum)
                summary.extentCount += 1
                summary.dataByteCount += UInt64(count)
                cursor += UInt64(count)
                progress(summary.dataByteCount, 0)
            }
        }
        try writeEnd(format: format, summary: summary, output)
        try output.drain()
        summary.streamByteCount = output.writtenByteCount
        summary.copiedBeforeWriteByteCount = live?.freeze.scratchByteCount ?? 0
        // Only after the whole stream is out: a failed write records nothing. (A live export
        // recorded it at its instant; its caller forgets it if the export fails.)
        if let endCheckpoint, !recordedEndCheckpoint {
            try store.addCheckpoint(endCheckpoint)
            recordedEndCheckpoint = true
        }
        return summary
    }

    /// The lower layer's bytes (zeros past its end: a disk grown with --size).
    private func readLower(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        throws
    {
        let source = try lower ?? openLower()
        lower = source
        let inLower =
            byteOffset >= source.byteCount
            ? 0 : Int(min(UInt64(buffer.count), source.byteCount - byteOffset))
        if inLower > 0 {
            try source.read(
                at: byteOffset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<inLower]))
        }
        UnsafeMutableRawBufferPointer(rebasing: buffer[inLower...]).initializeMemory(
            as: UInt8.self, repeating: 0)
    }

    private func writePreamble(format: Format, _ output: DiffOutput) throws {
        let header = store.header
        switch format {
        case .native:
            // An incremental diff applies to the disk as it was at the checkpoint.
            let diffHeader = DiffHeader(
                chunkByteCount: UInt32(header.geometry.chunkByteCount),
                virtualByteCount: header.virtualByteCount,
                baseByteCount: since == nil ? header.baseByteCount : header.virtualByteCount,
                baseFingerprint: since?.checkpoint.diskFingerprint ?? header.baseFingerprint,
                sinceCheckpointID: since?.checkpoint.id ?? 0)
            var bytes = [UInt8](repeating: 0, count: DiffHeader.byteCount)
            bytes.withUnsafeMutableBytes { diffHeader.encode(into: $0) }
            try output.append(bytes)
        case .rbd:
            try output.append(RBDDiff.bannerV1)
            if let since {
                // As `rbd export-diff --from-snap` names its starting snapshot.
                let name = Array(since.checkpoint.name.utf8)
                try output.append([RBDDiff.fromSnapshot])
                try output.append(littleEndian: UInt32(name.count))
                try output.append(name)
            }
            if let endCheckpoint {
                // As `rbd export-diff` of `image@snapshot` names its end: import-diff creates it.
                let name = Array(endCheckpoint.name.utf8)
                try output.append([RBDDiff.toSnapshot])
                try output.append(littleEndian: UInt32(name.count))
                try output.append(name)
            }
            try output.append([RBDDiff.size])
            try output.append(littleEndian: header.virtualByteCount)
        case .json:
            try output.append(Array("[".utf8))
        }
    }

    /// The native trailer's checksum covers every byte before it, its own first 24 included.
    private func writeEnd(format: Format, summary: Summary, _ output: DiffOutput) throws {
        switch format {
        case .native:
            let trailer = DiffRecord(
                kind: .end, first: summary.extentCount, second: summary.dataByteCount, checksum: 0)
            var bytes = [UInt8](repeating: 0, count: DiffRecord.byteCount)
            bytes.withUnsafeMutableBytes { trailer.encode(into: $0) }
            try bytes.withUnsafeBytes {
                try output.append(UnsafeRawBufferPointer(rebasing: $0[..<24]))
            }
            try output.append(littleEndian: output.checksum.digest)
        case .rbd:
            try output.append([RBDDiff.end])
        case .json:
            try output.append(Array((summary.extentCount == 0 ? "]\n" : "\n]\n").utf8))
        }
    }

    private func writeZero(
        _ extent: ChangedExtent, format: Format, _ output: DiffOutput, _ checksum: DiffChecksum
    ) throws {
        if format == .rbd {
            try output.append([RBDDiff.zero])
            try output.append(littleEndian: extent.byteOffset)
            try output.append(littleEndian: extent.byteCount)
            return
        }
        try writeNativeRecord(
            .zero, at: extent.byteOffset, byteCount: extent.byteCount, data: nil, output, checksum)
    }

    private func writeData(
        at byteOffset: UInt64, _ data: UnsafeRawBufferPointer, format: Format,
        _ output: DiffOutput, _ checksum: DiffChecksum
    ) throws {
        if format == .rbd {
            try output.append([RBDDiff.write])
            try output.append(littleEndian: byteOffset)
            try output.append(littleEndian: UInt64(data.count))
            try output.append(data)
            return
        }
        try writeNativeRecord(
            .data, at: byteOffset, byteCount: UInt64(data.count), data: data, output, checksum)
    }

    /// A native record: header, then the data if any. Its checksum is XXH3-64 of the header's
    /// first 24 bytes followed by the data (docs/FORMAT.md, "Diff stream").
    private func writeNativeRecord(
        _ kind: DiffRecord.Kind, at byteOffset: UInt64, byteCount: UInt64,
        data: UnsafeRawBufferPointer?, _ output: DiffOutput, _ checksum: DiffChecksum
    ) throws {
        var record = DiffRecord(kind: kind, first: byteOffset, second: byteCount, checksum: 0)
        var bytes = [UInt8](repeating: 0, count: DiffRecord.byteCount)
        bytes.withUnsafeMutableBytes { record.encode(into: $0) }
        checksum.reset()
        bytes.withUnsafeBytes { checksum.update(UnsafeRawBufferPointer(rebasing: $0[..<24])) }
        if let data { checksum.update(data) }
        record.checksum = checksum.digest
        bytes.withUnsafeMutableBytes { record.encode(into: $0) }
        try output.append(bytes)
        if let data { try output.append(data) }
    }

}
