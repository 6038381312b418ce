// Which layer of a chain of stores holds each chunk, found once at open, so that a read goes
// straight to the file of the layer that holds its bytes instead of asking every layer's bitmap
// in turn (what a qcow2 chain does, and a cost that grows with depth). Exact because the layers
// under a served store are read-only while it runs: each is opened under a shared lock that
// refuses a writer. The writable top store is not in it; its own bitmap is asked first.

/// Per unit of the disk of a chain's upper layer (the smallest chunk size of its stores), the
/// number of the layer whose store holds it: 0 for that upper layer, 1 for the store under it
/// and so on, `storeCount` for the bottom image (no store holds the unit).
///
/// Units live in pages of `unitsPerPage` entries; a page no store writes in is not allocated
/// (all bottom), so a sparse chain over a huge base costs little memory. A layer may have a
/// larger chunk than the unit: a unit lies wholly inside one chunk of every layer, because
/// chunk sizes are powers of two and chunks are aligned.
final class LayerOwnerIndex: Sendable {
    /// Most bytes the index may take; a chain whose stores hold more is read layer by layer.
    static let maxByteCount: UInt64 = 256 << 20
    static let pageShift: UInt64 = 16
    static var unitsPerPage: Int { 1 << Int(pageShift) }
    /// A unit no layer visited so far holds, while the index is built.
    private static let unresolved = UInt8.max

    /// The stores of the chain, upper first.
    let stores: [StoreFile]
    /// The image under the lowest store (raw, compressed, NBD).
    let bottom: any BlockSource
    /// Per layer (and the bottom, last): the bytes of the disk that can come from it. Past a
    /// layer's base, the layer reads zeros, whatever the layers under it hold.
    let visibleByteCounts: [UInt64]
    let unitShift: UInt64
    let pages: [[UInt8]]

    /// The index of the chain whose upper layer is `disk`, or nil when it would not pay (a
    /// single store over its image) or would exceed `maxByteCount`.
    init?(chainOf disk: VirtualDisk) {
        var disks = [disk]
        while let lower = disks[disks.count - 1].base as? VirtualDiskImage {
            disks.append(lower.disk)
        }
        guard disks.count >= 2, disks.count < Int(Self.unresolved) else { return nil }
        let unitByteCount = disks.map(\.geometry.chunkByteCount).min() ?? 0
        let unitShift = UInt64(unitByteCount.trailingZeroBitCount)
        let unitCount = (disk.byteCount + unitByteCount - 1) >> unitShift
        let pageCount = Int((unitCount + UInt64(Self.unitsPerPage) - 1) >> Self.pageShift)
        var pages = [[UInt8]](repeating: [], count: pageCount)
        var allocatedByteCount = UInt64(pageCount) * 8
        for (layerNumber, layer) in disks.enumerated() {
            let chunkShift = UInt64(layer.geometry.chunkByteCount.trailingZeroBitCount)
            let unitsPerChunkShift = chunkShift - unitShift
            let chunkCount = layer.store.header.chunkCount
            var chunkIndex: UInt64 = 0
            while chunkIndex < chunkCount {
                let run = layer.store.presentRun(from: chunkIndex, limit: chunkCount - chunkIndex)
                if run.isPresent {
                    let firstUnit = chunkIndex << unitsPerChunkShift
                    let endUnit = min(
                        unitCount, (chunkIndex + run.chunkCount) << unitsPerChunkShift)
                    let units = firstUnit..<max(firstUnit, endUnit)
                    guard
                        Self.claim(
                            units, for: UInt8(layerNumber), in: &pages,
                            allocatedByteCount: &allocatedByteCount)
                    else { return nil }
                }
                chunkIndex += run.chunkCount
            }
        }
        for pageIndex in pages.indices where !pages[pageIndex].isEmpty {
            for unit in pages[pageIndex].indices where pages[pageIndex][unit] == Self.unresolved {
                pages[pageIndex][unit] = UInt8(disks.count)
            }
        }
        var visibleByteCounts = [disk.byteCount]
        for layer in disks {
            visibleByteCounts.append(
                min(visibleByteCounts[visibleByteCounts.count - 1], layer.base.byteCount))
        }
        self.stores = disks.map(\.store)
        self.bottom = disks[disks.count - 1].base
        self.visibleByteCounts = visibleByteCounts
        self.unitShift = unitShift
        self.pages = pages
    }

    /// Gives each unit of `units` that no upper layer holds to layer `layerNumber`, allocating
    /// pages as needed; false if that would take the index over `maxByteCount`.
    private static func claim(
        _ units: Range<UInt64>, for layerNumber: UInt8, in pages: inout [[UInt8]],
        allocatedByteCount: inout UInt64
    ) -> Bool {
        var unit = units.lowerBound
        while unit < units.upperBound {
            let pageIndex = Int(unit >> pageShift)
            let pageEnd = min(units.upperBound, UInt64(pageIndex + 1) << pageShift)
            if pages[pageIndex].isEmpty {
                allocatedByteCount += UInt64(unitsPerPage)
                guard allocatedByteCount <= maxByteCount else { return false }
                pages[pageIndex] = [UInt8](repeating: unresolved, count: unitsPerPage)
            }
            let first = Int(unit & UInt64(unitsPerPage - 1))
            let last = first + Int(pageEnd - unit)
            for entry in first..<last where pages[pageIndex][entry] == unresolved {
                pages[pageIndex][entry] = layerNumber
            }
            unit = pageEnd
        }
        return true
    }

    /// The number of the layer that holds unit `unitIndex` (`stores.count`: the bottom).
    @inline(__always)
    func layerNumber(ofUnit unitIndex: UInt64) -> Int {
        let page = pages[Int(unitIndex >> Self.pageShift)]
        return page.isEmpty
            ? stores.count : Int(page[Int(unitIndex & UInt64(Self.unitsPerPage - 1))])
    }

    /// Fills `buffer` with the chain's bytes at `virtualByteOffset` (in range), each run of
    /// units from the one layer that holds it, zeros where that layer is out of sight.
    func read(at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        _ = try forEachRun(at: virtualByteOffset, in: buffer) { layerNumber, byteOffset, part in
            if layerNumber < stores.count {
                try stores[layerNumber].readBytes(at: byteOffset, into: part)
            } else {
                try bottom.read(at: byteOffset, into: part)
            }
            return true
        }
    }

    /// Like `read`, but only from memory (the page cache, a decompressed block); false, having
    /// filled part of `buffer`, if any part would wait on a device.
    func readIfCached(at virtualByteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        forEachRun(at: virtualByteOffset, in: buffer) { layerNumber, byteOffset, part in
            layerNumber < stores.count
                ? stores[layerNumber].readBytesIfCached(at: byteOffset, into: part)
                : bottom.readIfReady(at: byteOffset, into: part)
        }
    }

    /// Splits `buffer` into runs of units held by one layer and calls `readPart` with the
    /// layer's number and the part of the run the layer can show, zeroing the rest; stops and
    /// returns false as soon as `readPart` does.
    @inline(__always)
    private func forEachRun(
        at virtualByteOffset: UInt64, in buffer: UnsafeMutableRawBufferPointer,
        _ readPart: (Int, UInt64, UnsafeMutableRawBufferPointer) throws -> Bool
    ) rethrows -> Bool {
        let end = virtualByteOffset + UInt64(buffer.count)
        var cursor = virtualByteOffset
        while cursor < end {
            var unitIndex = cursor >> unitShift
            let layerNumber = self.layerNumber(ofUnit: unitIndex)
            unitIndex += 1
            while unitIndex << unitShift < end && self.layerNumber(ofUnit: unitIndex) == layerNumber
            {
                unitIndex += 1
            }
            let runEnd = min(end, unitIndex << unitShift)
            let piece = UnsafeMutableRawBufferPointer(
                rebasing: buffer[Int(cursor - virtualByteOffset)..<Int(runEnd - virtualByteOffset)])
            let visibleEnd = visibleByteCounts[layerNumber]
            let visibleCount =
                cursor >= visibleEnd ? 0 : Int(min(runEnd, visibleEnd) - cursor)
            if visibleCount > 0 {
                guard
                    try readPart(
                        layerNumber, cursor,
                        UnsafeMutableRawBufferPointer(rebasing: piece[..<visibleCount]))
                else { return false }
            }
            if visibleCount < piece.count {
                UnsafeMutableRawBufferPointer(rebasing: piece[visibleCount...]).initializeMemory(
                    as: UInt8.self, repeating: 0)
            }
            cursor = runEnd
        }
        return true
    }
}
