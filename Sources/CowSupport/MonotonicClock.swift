// Time for deadlines and rates: a clock that never goes back (wall-clock changes do not
// move it). No dates here.

#if canImport(Glibc)
    import Glibc
#endif

/// Seconds on the monotonic clock, from an arbitrary start. The corresponding C function is
/// `clock_gettime(CLOCK_MONOTONIC)`.
package func monotonicSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}
