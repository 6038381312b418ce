// The chunk bitmap in memory: one bit a chunk, set = the chunk lives in the store.
// Pages are allocated on first set, so memory follows what was written, not the disk size.
// Not thread-safe: the store guards it with its lock. For that reason its stored properties opt
// out of Swift's dynamic exclusivity checks, which cost a runtime call per access (a third of a
// 4 KiB read's bitmap lookup) and could only catch a same-thread overlap that never happens here.

/// A sparse bitmap of chunk states, paged like its on-disk region (docs/FORMAT.md, "Chunk bitmap").
public final class ChunkBitmap {
    /// Bytes in one page, on disk and in memory.
    public static let pageByteCount = 4096
    /// Chunks one page covers.
    public static let chunksPerPage: UInt64 = UInt64(pageByteCount) * 8
    static let wordsPerPage = pageByteCount / 8

    /// Chunks the bitmap covers.
    public let chunkCount: UInt64
    /// Pages the bitmap covers (the on-disk region may be longer: it is padded).
    public let pageCount: Int
    /// Set bits: chunks held by the store.
    @exclusivity(unchecked) public private(set) var setCount: UInt64 = 0
    @exclusivity(unchecked) private var pages: [UnsafeMutablePointer<UInt64>?]
    /// One bit a page, set = dirty: a write's commit marks its page with a shift and an `or`,
    /// where inserting into a `Set<Int>` hashed the index every time.
    private let dirtyWords: UnsafeMutablePointer<UInt64>
    private let dirtyWordCount: Int
    /// Pages with bits set since the last `takeDirtyPages`.
    @exclusivity(unchecked) public private(set) var dirtyPageCount = 0

    /// An all-clear bitmap for `chunkCount` chunks; allocates only the page table.
    public init(chunkCount: UInt64) {
        self.chunkCount = chunkCount
        pageCount = Int((chunkCount + Self.chunksPerPage - 1) / Self.chunksPerPage)
        pages = Array(repeating: nil, count: pageCount)
        dirtyWordCount = (pageCount + 63) / 64
        dirtyWords = .allocate(capacity: dirtyWordCount)
        dirtyWords.initialize(repeating: 0, count: dirtyWordCount)
    }

    deinit {
        for case let page? in pages { page.deallocate() }
        dirtyWords.deallocate()
    }
    /// Pages holding memory (at least one bit set, or loaded non-zero).
    public var allocatedPageCount: Int { pages.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }

    /// Whether chunk `chunkIndex` is held by the store.
    @inlinable
    public func isSet(_ chunkIndex: UInt64) -> Bool {
        precondition(chunkIndex < chunkCount, "chunk index out of range")
        return word(at: chunkIndex) & (1 << (chunkIndex & 63)) != 0
    }

    @usableFromInline
    func word(at chunkIndex: UInt64) -> UInt64 {
        guard let page = pages[Int(chunkIndex / Self.chunksPerPage)] else { return 0 }
        return page[Int((chunkIndex % Self.chunksPerPage) / 64)]
    }

    /// Sets chunk `chunkIndex`; returns false if it was already set.
    @discardableResult
    public func set(_ chunkIndex: UInt64) -> Bool {
        precondition(chunkIndex < chunkCount, "chunk index out of range")
        let pageIndex = Int(chunkIndex / Self.chunksPerPage)
        let page = pages[pageIndex] ?? allocatePage(pageIndex)
        let wordIndex = Int((chunkIndex % Self.chunksPerPage) / 64)
        let mask: UInt64 = 1 << (chunkIndex & 63)
        guard page[wordIndex] & mask == 0 else { return false }
        page[wordIndex] |= mask
        setCount += 1
        markDirty(pageIndex)
        return true
    }

    /// Sets every chunk in `chunks`, a word at a time; returns how many were clear before.
    /// Pages that change become dirty.
    @discardableResult
    public func set(_ chunks: Range<UInt64>) -> UInt64 {
        let newlySetCount = flip(chunks, to: true)
        setCount += newlySetCount
        return newlySetCount
    }

    /// Clears every chunk in `chunks`, a word at a time; returns how many were set before.
    /// Pages that change become dirty (they keep their memory).
    @discardableResult
    public func clear(_ chunks: Range<UInt64>) -> UInt64 {
        let clearedCount = flip(chunks, to: false)
        setCount -= clearedCount
        return clearedCount
    }

    /// Flips the bits in `chunks` that are not yet `isSet`, marking their pages dirty; returns
    /// how many it flipped. Setting allocates missing pages; clearing skips them (all clear).
    private func flip(_ chunks: Range<UInt64>, to isSet: Bool) -> UInt64 {
        precondition(chunks.upperBound <= chunkCount, "chunk range out of range")
        var flippedCount: UInt64 = 0
        forEachWord(in: chunks, allocating: isSet) { page, wordIndex, mask, pageIndex in
            let flipped = mask & (isSet ? ~page[wordIndex] : page[wordIndex])
            guard flipped != 0 else { return }
            page[wordIndex] ^= flipped
            flippedCount += UInt64(flipped.nonzeroBitCount)
            markDirty(pageIndex)
        }
        return flippedCount
    }

    /// Calls `body` with each word that `chunks` touches and the mask of its bits in `chunks`.
    /// Pages without memory are allocated first, or skipped when `allocating` is false.
    private func forEachWord(
        in chunks: Range<UInt64>, allocating: Bool,
        _ body: (UnsafeMutablePointer<UInt64>, Int, UInt64, Int) -> Void
    ) {
        var current = chunks.lowerBound
        while current < chunks.upperBound {
            let pageIndex = Int(current / Self.chunksPerPage)
            let pageEnd = min(chunks.upperBound, UInt64(pageIndex + 1) * Self.chunksPerPage)
            guard let page = pages[pageIndex] ?? (allocating ? allocatePage(pageIndex) : nil)
            else {
                current = pageEnd
                continue
            }
            while current < pageEnd {
                let bit = current & 63
                let bitCount = min(64 - bit, pageEnd - current)
                let mask: UInt64 = (bitCount == 64 ? ~0 : (1 << bitCount) - 1) << bit
                body(page, Int((current % Self.chunksPerPage) / 64), mask, pageIndex)
                current += bitCount
            }
        }
    }

    /// The number of chunks from `chunkIndex` (at most `limit`) that share its state,
    /// and that state: the unit for coalescing reads and reporting extents.
    public func run(from chunkIndex: UInt64, limit: UInt64) -> (isSet: Bool, chunkCount: UInt64) {
        precondition(chunkIndex < chunkCount && limit > 0)
        let end = min(chunkCount, chunkIndex + limit)
        let state = isSet(chunkIndex)
        var current = chunkIndex
        while current < end {
            let pageIndex = Int(current / Self.chunksPerPage)
            guard let page = pages[pageIndex] else {
                if state { break }
                current = min(end, UInt64(pageIndex + 1) * Self.chunksPerPage)
                continue
            }
            let wordIndex = Int((current % Self.chunksPerPage) / 64)
            let bit = current & 63
            // Bits equal to `state` become zeros in `differing`; find the first one that is not.
            var differing = state ? ~page[wordIndex] : page[wordIndex]
            differing &= ~0 << bit
            if differing != 0 {
                current = current - bit + UInt64(differing.trailingZeroBitCount)
                break
            }
            current += 64 - bit
        }
        return (state, min(current, end) - chunkIndex)
    }

    /// Replaces page `pageIndex` with bytes read from disk (little-endian, LSB = lowest chunk).
    /// All-zero pages keep no memory. Bits past `chunkCount` must be clear.
    public func loadPage(_ pageIndex: Int, from bytes: UnsafeRawBufferPointer) throws(FormatError) {
        precondition(pageIndex < pageCount && bytes.count == Self.pageByteCount)
        // The last page may cover chunks past the end of the disk: their bits must be clear.
        let validBitCount = chunkCount - UInt64(pageIndex) * Self.chunksPerPage
        if validBitCount < Self.chunksPerPage {
            for wordIndex in Int(validBitCount / 64)..<Self.wordsPerPage {
                let firstBit = UInt64(wordIndex) * 64
                let validBitsInWord = validBitCount > firstBit ? validBitCount - firstBit : 0
                let validMask: UInt64 = validBitsInWord >= 64 ? ~0 : (1 << validBitsInWord) - 1
                guard bytes.loadLittleEndian(at: wordIndex * 8, as: UInt64.self) & ~validMask == 0
                else {
                    throw .invalidField(
                        name: "bitmap bit past the last chunk in page", value: UInt64(pageIndex))
                }
            }
        }
        if let old = pages[pageIndex] {
            setCount -= (0..<Self.wordsPerPage).reduce(0) { $0 + UInt64(old[$1].nonzeroBitCount) }
            old.deallocate()
            pages[pageIndex] = nil
        }
        if dirtyWords[pageIndex / 64] & (1 << (pageIndex % 64)) != 0 {
            dirtyWords[pageIndex / 64] &= ~(1 << (pageIndex % 64))
            dirtyPageCount -= 1
        }
        guard bytes.contains(where: { $0 != 0 }) else { return }
        let page = allocatePage(pageIndex)
        for wordIndex in 0..<Self.wordsPerPage {
            page[wordIndex] = bytes.loadLittleEndian(at: wordIndex * 8, as: UInt64.self)
            setCount += UInt64(page[wordIndex].nonzeroBitCount)
        }
    }

    /// Copies page `pageIndex` in its on-disk form into `bytes` (zeros if never allocated).
    public func copyPage(_ pageIndex: Int, into bytes: UnsafeMutableRawBufferPointer) {
        precondition(pageIndex < pageCount && bytes.count == Self.pageByteCount)
        guard let page = pages[pageIndex] else {
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        for wordIndex in 0..<Self.wordsPerPage {
            bytes.storeLittleEndian(page[wordIndex], at: wordIndex * 8)
        }
    }

    /// Returns the pages changed since the last call, sorted, and forgets them.
    public func takeDirtyPages() -> [Int] {
        var pageIndexes: [Int] = []
        pageIndexes.reserveCapacity(dirtyPageCount)
        for wordIndex in 0..<dirtyWordCount {
            var word = dirtyWords[wordIndex]
            while word != 0 {
                pageIndexes.append(wordIndex * 64 + word.trailingZeroBitCount)
                word &= word - 1
            }
            dirtyWords[wordIndex] = 0
        }
        dirtyPageCount = 0
        return pageIndexes
    }

    /// Marks pages dirty again (a write of them failed and must be retried at the next flush).
    public func markDirty(_ pageIndexes: [Int]) {
        for pageIndex in pageIndexes {
            precondition(pageIndex >= 0 && pageIndex < pageCount, "page index out of range")
            markDirty(pageIndex)
        }
    }

    /// Marks page `pageIndex` dirty.
    @inline(__always)
    private func markDirty(_ pageIndex: Int) {
        let bit: UInt64 = 1 << (pageIndex % 64)
        guard dirtyWords[pageIndex / 64] & bit == 0 else { return }
        dirtyWords[pageIndex / 64] |= bit
        dirtyPageCount += 1
    }

    /// The words of every page that holds memory, for `formUnion` on another bitmap.
    public func allocatedPages() -> [(pageIndex: Int, words: [UInt64])] {
        pages.enumerated().compactMap { pageIndex, page in
            page.map {
                (pageIndex, Array(UnsafeBufferPointer(start: $0, count: Self.wordsPerPage)))
            }
        }
    }

    /// Sets every bit set in `pages` (from `allocatedPages` of a bitmap of the same chunks);
    /// changed pages become dirty.
    public func formUnion(_ pages: [(pageIndex: Int, words: [UInt64])]) {
        for (pageIndex, words) in pages {
            precondition(pageIndex < pageCount && words.count == Self.wordsPerPage)
            let page = self.pages[pageIndex] ?? allocatePage(pageIndex)
            for wordIndex in 0..<Self.wordsPerPage where words[wordIndex] & ~page[wordIndex] != 0 {
                setCount += UInt64((words[wordIndex] & ~page[wordIndex]).nonzeroBitCount)
                page[wordIndex] |= words[wordIndex]
                markDirty(pageIndex)
            }
        }
    }

    /// Clears every bit and frees every page; all pages that held bits become dirty.
    public func clearAll() {
        for (pageIndex, page) in pages.enumerated() {
            guard let page else { continue }
            page.deallocate()
            pages[pageIndex] = nil
            markDirty(pageIndex)
        }
        setCount = 0
    }

    private func allocatePage(_ pageIndex: Int) -> UnsafeMutablePointer<UInt64> {
        let page = UnsafeMutablePointer<UInt64>.allocate(capacity: Self.wordsPerPage)
        page.initialize(repeating: 0, count: Self.wordsPerPage)
        pages[pageIndex] = page
        return page
    }
}
