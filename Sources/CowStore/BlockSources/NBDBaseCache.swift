// What a network base is known to hold, in memory: pages of base data already fetched
// (bounded, evicted by CLOCK), the fetches in flight per page (a page wanted twice is fetched
// once), and the ranges block status reported as zeros (never fetched). One lock for all
// three; bytes are copied in and out under it. Talking to the server is NBDBaseLink's.

import CowSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A reader's share of a fetch: bytes to copy from the fetch's buffer once it is done.
struct NBDBaseWait {
    let fetch: NBDBaseFetch
    let bufferOffset: Int
    let fetchOffset: Int
    var byteCount: Int
}

/// The pages, fetches in flight and zero ranges of one network base.
///
/// `@unchecked Sendable`: `state` is `Locked`, and `arena` is read and written only inside
/// `state.withLock`.
final class NBDBaseCache: @unchecked Sendable {
    /// The unit of caching and of fetching: reads are widened to whole pages.
    static let pageByteCount = 4096

    struct State {
        var slotOfPage: [UInt64: Int] = [:]
        /// The page each slot holds; `UInt64.max` for none.
        var pageOfSlot: [UInt64]
        /// CLOCK's reference bits: set by each hit, cleared as the hand passes.
        var isReferenced: [Bool]
        var usedSlotCount = 0
        var clockHand = 0
        var inFlight: [UInt64: NBDBaseFetch] = [:]
        var zeros = ZeroMap()
    }

    let imageByteCount: UInt64
    let slotCount: Int
    private let arena: UnsafeMutableRawBufferPointer
    private let state: Locked<State>

    /// A cache of `byteCount` bytes of pages (0 keeps none) for a base of `imageByteCount`.
    init(imageByteCount: UInt64, byteCount: Int) {
        self.imageByteCount = imageByteCount
        slotCount = max(byteCount, 0) / Self.pageByteCount
        // Untouched pages of a large allocation take no memory until a slot is first used.
        arena = .allocate(byteCount: max(slotCount, 1) * Self.pageByteCount, alignment: 4096)
        state = Locked(
            State(
                pageOfSlot: Array(repeating: .max, count: slotCount),
                isReferenced: Array(repeating: false, count: slotCount)))
    }

    deinit { arena.deallocate() }

    private func pageRange(_ pageIndex: UInt64) -> Range<UInt64> {
        let start = pageIndex * UInt64(Self.pageByteCount)
        return start..<min(start + UInt64(Self.pageByteCount), imageByteCount)
    }

    /// Serves what it can of `byteCount` bytes at `byteOffset` into `destination` (cached
    /// pages, known zeros), and says what to wait for: fetches already in flight, and the new
    /// fetches (of at most `maxFetchByteCount` bytes) it made for the rest, which the caller
    /// submits. With no destination (a prefetch), only fetches are made.
    /// With `collectsInFlight` and no destination, `waits` names (with no bytes) each fetch
    /// already in flight for the range, for a caller that waits for the range to arrive.
    func plan(
        at byteOffset: UInt64, byteCount: Int, into destination: UnsafeMutableRawBufferPointer?,
        deadline: Double, maxFetchByteCount: Int, collectsInFlight: Bool = false
    ) -> (waits: [NBDBaseWait], newFetches: [NBDBaseFetch]) {
        let end = byteOffset + UInt64(byteCount)
        let pageSize = UInt64(Self.pageByteCount)
        let now = monotonicSeconds()
        var waits: [NBDBaseWait] = []
        var newFetches: [NBDBaseFetch] = []
        var missFirstPage: UInt64? = nil
        var missPageCount: UInt64 = 0
        let maxPagesPerFetch = UInt64(max(maxFetchByteCount / Self.pageByteCount, 1))
        state.withLock { state in
            func closeMissRun() {
                guard let first = missFirstPage else { return }
                let fetchStart = first * pageSize
                let fetchEnd = min((first + missPageCount) * pageSize, imageByteCount)
                let fetch = NBDBaseFetch(
                    kind: .read, byteOffset: fetchStart, byteCount: Int(fetchEnd - fetchStart),
                    deadline: deadline,
                    whenFinished: { [self] fetch, succeeded in store(fetch, succeeded) })
                for page in first..<(first + missPageCount) { state.inFlight[page] = fetch }
                newFetches.append(fetch)
                if destination != nil {
                    let from = max(byteOffset, fetchStart)
                    let to = min(end, fetchEnd)
                    waits.append(
                        NBDBaseWait(
                            fetch: fetch, bufferOffset: Int(from - byteOffset),
                            fetchOffset: Int(from - fetchStart), byteCount: Int(to - from)))
                }
                missFirstPage = nil
                missPageCount = 0
            }
            for pageIndex in (byteOffset / pageSize)...((end - 1) / pageSize) {
                let page = pageRange(pageIndex)
                let pieceStart = max(byteOffset, page.lowerBound)
                let pieceEnd = min(end, page.upperBound)
                let piece = destination.map {
                    UnsafeMutableRawBufferPointer(
                        rebasing: $0[Int(pieceStart - byteOffset)..<Int(pieceEnd - byteOffset)])
                }
                if state.zeros.covers(page) {
                    closeMissRun()
                    piece?.initializeMemory(as: UInt8.self, repeating: 0)
                } else if let slot = state.slotOfPage[pageIndex] {
                    closeMissRun()
                    state.isReferenced[slot] = true
                    if let piece {
                        let from = slot * Self.pageByteCount + Int(pieceStart - page.lowerBound)
                        piece.copyMemory(
                            from: UnsafeRawBufferPointer(
                                rebasing: arena[from..<(from + piece.count)]))
                    }
                } else if let fetch = state.inFlight[pageIndex], !fetch.isExpired(now: now) {
                    closeMissRun()
                    guard destination != nil else {
                        if collectsInFlight && waits.last?.fetch !== fetch {
                            waits.append(
                                NBDBaseWait(
                                    fetch: fetch, bufferOffset: 0, fetchOffset: 0, byteCount: 0))
                        }
                        continue
                    }
                    let bufferOffset = Int(pieceStart - byteOffset)
                    if let last = waits.last, last.fetch === fetch,
                        last.bufferOffset + last.byteCount == bufferOffset
                    {
                        waits[waits.count - 1].byteCount += Int(pieceEnd - pieceStart)
                    } else {
                        waits.append(
                            NBDBaseWait(
                                fetch: fetch, bufferOffset: bufferOffset,
                                fetchOffset: Int(pieceStart - fetch.byteOffset),
                                byteCount: Int(pieceEnd - pieceStart)))
                    }
                } else {
                    if missPageCount == maxPagesPerFetch { closeMissRun() }
                    if missFirstPage == nil { missFirstPage = pageIndex }
                    missPageCount += 1
                }
            }
            closeMissRun()
        }
        return (waits, newFetches)
    }

    /// Copies `byteCount` bytes at `byteOffset` into `destination` if every page is cached or
    /// known zeros; false otherwise (then `destination` may be partly filled). Never waits
    /// for the network and does not allocate.
    func readIfCached(at byteOffset: UInt64, into destination: UnsafeMutableRawBufferPointer)
        -> Bool
    {
        guard !destination.isEmpty else { return true }
        let end = byteOffset + UInt64(destination.count)
        let pageSize = UInt64(Self.pageByteCount)
        return state.withLock { state in
            for pageIndex in (byteOffset / pageSize)...((end - 1) / pageSize) {
                let page = pageRange(pageIndex)
                let pieceStart = max(byteOffset, page.lowerBound)
                let pieceEnd = min(end, page.upperBound)
                let piece = UnsafeMutableRawBufferPointer(
                    rebasing: destination[
                        Int(pieceStart - byteOffset)..<Int(pieceEnd - byteOffset)])
                if state.zeros.covers(page) {
                    piece.initializeMemory(as: UInt8.self, repeating: 0)
                } else if let slot = state.slotOfPage[pageIndex] {
                    state.isReferenced[slot] = true
                    let from = slot * Self.pageByteCount + Int(pieceStart - page.lowerBound)
                    piece.copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: arena[from..<(from + piece.count)]))
                } else {
                    return false
                }
            }
            return true
        }
    }

    /// Keeps a finished fetch's pages (if it succeeded) and forgets it as in flight.
    private func store(_ fetch: NBDBaseFetch, _ succeeded: Bool) {
        let pageSize = UInt64(Self.pageByteCount)
        let firstPage = fetch.byteOffset / pageSize
        let pageCount = (UInt64(fetch.byteCount) + pageSize - 1) / pageSize
        state.withLock { state in
            for pageIndex in firstPage..<(firstPage + pageCount) {
                if state.inFlight[pageIndex] === fetch { state.inFlight[pageIndex] = nil }
                guard succeeded, slotCount > 0, state.slotOfPage[pageIndex] == nil else {
                    continue
                }
                let slot = Self.victim(&state, slotCount: slotCount)
                state.slotOfPage[pageIndex] = slot
                state.pageOfSlot[slot] = pageIndex
                let from = Int(pageIndex - firstPage) * Self.pageByteCount
                let count = min(Self.pageByteCount, fetch.byteCount - from)
                UnsafeMutableRawBufferPointer(
                    rebasing: arena[
                        (slot * Self.pageByteCount)..<(slot * Self.pageByteCount + count)]
                ).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: fetch.buffer[from..<(from + count)]))
            }
        }
    }

    /// A free slot, or the one CLOCK evicts (its page is forgotten).
    private static func victim(_ state: inout State, slotCount: Int) -> Int {
        if state.usedSlotCount < slotCount {
            state.usedSlotCount += 1
            return state.usedSlotCount - 1
        }
        while state.isReferenced[state.clockHand] {
            state.isReferenced[state.clockHand] = false
            state.clockHand = (state.clockHand + 1) % slotCount
        }
        let slot = state.clockHand
        state.clockHand = (state.clockHand + 1) % slotCount
        state.slotOfPage[state.pageOfSlot[slot]] = nil
        state.isReferenced[slot] = false
        return slot
    }

    // MARK: Block status

    /// Records the extents of a finished block-status fetch; returns where knowledge now ends.
    func record(_ fetch: NBDBaseFetch) -> UInt64 {
        state.withLock { state in
            var cursor = fetch.byteOffset
            for extent in fetch.extents where cursor < imageByteCount {
                let extentEnd = min(cursor + extent.byteCount, imageByteCount)
                // Only a stretch that reads as zeros (NBD_STATE_ZERO) may skip the network.
                if extent.flags & 2 != 0 {
                    state.zeros.append(cursor..<extentEnd, isHole: extent.flags & 1 != 0)
                }
                cursor = extentEnd
            }
            if cursor > state.zeros.knownEnd { state.zeros.knownEnd = cursor }
            return state.zeros.knownEnd
        }
    }

    /// The extent at `byteOffset`, at most `maxByteCount` long, as far as block status has
    /// told: zeros where the base said so, data everywhere else (always safe to read).
    func extent(at byteOffset: UInt64, maxByteCount: UInt64) -> SourceExtent {
        state.withLock { state in
            let limit = min(maxByteCount, imageByteCount - byteOffset)
            if let zero = state.zeros.range(containing: byteOffset) {
                return SourceExtent(
                    byteCount: min(limit, zero.range.upperBound - byteOffset),
                    allocation: zero.isHole ? .hole : .zero, depth: zero.isHole ? 0 : 1)
            }
            let next = state.zeros.nextStart(after: byteOffset) ?? .max
            return SourceExtent(byteCount: min(limit, next - byteOffset), isHole: false)
        }
    }

    var isZeroMapFull: Bool { state.withLock { $0.zeros.isFull } }
}

/// The stretches of a base known to read as zeros, sorted and disjoint, appended in order as
/// block status walks the base. Bounded: past `maxRangeCount` stretches it stops growing.
struct ZeroMap {
    static let maxRangeCount = 1 << 20
    private(set) var ranges: [Range<UInt64>] = []
    private(set) var holes: [Bool] = []
    /// Bytes from 0 that block status has described.
    var knownEnd: UInt64 = 0

    var isFull: Bool { ranges.count >= Self.maxRangeCount }

    mutating func append(_ range: Range<UInt64>, isHole: Bool) {
        guard !range.isEmpty, !isFull else { return }
        if let last = ranges.last, last.upperBound == range.lowerBound, holes.last == isHole {
            ranges[ranges.count - 1] = last.lowerBound..<range.upperBound
        } else if ranges.last.map({ $0.upperBound <= range.lowerBound }) ?? true {
            ranges.append(range)
            holes.append(isHole)
        }
    }

    /// The index of the last range starting at or before `byteOffset`.
    private func lastIndex(startingAtOrBefore byteOffset: UInt64) -> Int? {
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].lowerBound <= byteOffset { low = middle + 1 } else { high = middle }
        }
        return low > 0 ? low - 1 : nil
    }

    func range(containing byteOffset: UInt64) -> (range: Range<UInt64>, isHole: Bool)? {
        guard let index = lastIndex(startingAtOrBefore: byteOffset),
            ranges[index].contains(byteOffset)
        else { return nil }
        return (ranges[index], holes[index])
    }

    func nextStart(after byteOffset: UInt64) -> UInt64? {
        let index = lastIndex(startingAtOrBefore: byteOffset).map { $0 + 1 } ?? 0
        return index < ranges.count ? ranges[index].lowerBound : nil
    }

    /// Whether all of `range` reads as zeros.
    func covers(_ range: Range<UInt64>) -> Bool {
        guard !ranges.isEmpty, let zero = self.range(containing: range.lowerBound) else {
            return false
        }
        return zero.range.upperBound >= range.upperBound
    }
}
