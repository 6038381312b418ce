// Per-chunk mutual exclusion for copy-up: a fixed array of mutexes indexed by group of
// chunks, always taken in ascending stripe order so that multi-chunk holders never deadlock.

#if canImport(Glibc)
    import Glibc
#endif

/// A fixed set of mutexes that chunks hash onto: each run of `chunksPerStripe` chunks shares
/// one, runs taken modulo the stripe count. A 1 MiB write of 4 KiB chunks takes 4 mutexes,
/// not 256 (16 KiB of its instructions went to locking).
/// `@unchecked Sendable`: the pthread mutexes themselves are the synchronisation; the
/// pointer is immutable after init.
final class StripedLocks: @unchecked Sendable {
    /// Stripes: enough that unrelated chunks rarely share one; 64 bytes each.
    static let stripeCount: UInt64 = 1024
    /// Consecutive chunks under one stripe (a power of two).
    static let chunksPerStripe: UInt64 = 64
    private let mutexes: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutexes = .allocate(capacity: Int(Self.stripeCount))
        for index in 0..<Int(Self.stripeCount) {
            pthread_mutex_init(mutexes + index, nil)
        }
    }

    deinit {
        for index in 0..<Int(Self.stripeCount) { pthread_mutex_destroy(mutexes + index) }
        mutexes.deallocate()
    }

    /// Runs `body` holding the stripes of every chunk in `chunks`.
    func withLocks<Result>(chunks: ClosedRange<UInt64>, _ body: () throws -> Result) rethrows
        -> Result
    {
        let (low, high) = stripeRanges(for: chunks)
        for index in low { pthread_mutex_lock(mutexes + index) }
        for index in high { pthread_mutex_lock(mutexes + index) }
        defer {
            for index in low { pthread_mutex_unlock(mutexes + index) }
            for index in high { pthread_mutex_unlock(mutexes + index) }
        }
        return try body()
    }

    /// The stripes of `chunks` as two ascending ranges, the second empty unless they wrap around.
    private func stripeRanges(for chunks: ClosedRange<UInt64>) -> (Range<Int>, Range<Int>) {
        let count = Self.stripeCount
        let firstGroup = chunks.lowerBound / Self.chunksPerStripe
        let lastGroup = chunks.upperBound / Self.chunksPerStripe
        if lastGroup - firstGroup + 1 >= count { return (0..<Int(count), 0..<0) }
        let first = Int(firstGroup % count)
        let last = Int(lastGroup % count)
        if first <= last { return (first..<(last + 1), 0..<0) }
        return (0..<(last + 1), first..<Int(count))
    }
}
