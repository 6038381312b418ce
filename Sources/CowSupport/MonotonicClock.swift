// Time for deadlines and rates: a clock that never goes back (wall-clock changes do not
// move it). No dates here.

#if canImport(Glibc)
    import Glibc
#endif

/// Seconds on the monotonic clock, from an arbitrary start. The corresponding C function is
/// `clock_gettime(CLOCK_MONOTONIC)`. Public and inlinable (not package: Swift keeps no body
/// for an `@inlinable package` function in the module interface): a request reads the clock
/// two or three times, and a call into another module for each was measurable.
@inlinable
public func monotonicSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// Nanoseconds on the monotonic clock, from an arbitrary start: what a request's latency is
/// measured in, without the floating point `monotonicSeconds` costs. The corresponding C
/// function is `clock_gettime(CLOCK_MONOTONIC)`.
@inlinable
public func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    // Never negative on the monotonic clock; wraps after 584 years of uptime.
    return UInt64(truncatingIfNeeded: time.tv_sec) &* 1_000_000_000
        &+ UInt64(truncatingIfNeeded: time.tv_nsec)
}
