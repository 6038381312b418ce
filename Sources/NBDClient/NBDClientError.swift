// The one error type of NBDClient: what libnbd said when a call failed. libnbd keeps the last
// error per thread, so it is read right after the failing call, on the same thread.

import CNBD

/// A failed libnbd call: the call's name, `nbd_get_error()` text and `nbd_get_errno()`.
///
/// `errno` is the POSIX code libnbd reports (`EINVAL`, `EPERM`, `ENOSPC`, `EIO`, `ENOTSUP`...),
/// either from the server's NBD error reply or from libnbd's own checks; 0 when libnbd has none.
public struct NBDClientError: Error, CustomStringConvertible, Sendable {
    /// The libnbd function that failed, for example `"nbd_pread"`.
    public let operation: String
    /// The text of `nbd_get_error()`, or a description of a wrapper-side failure.
    public let message: String
    /// The value of `nbd_get_errno()`.
    public let errno: Int32

    /// Captures libnbd's thread-local error after `operation` returned failure.
    /// The corresponding C functions are `nbd_get_error` and `nbd_get_errno`.
    static func last(_ operation: String) -> NBDClientError {
        let text = nbd_get_error().map { String(cString: $0) } ?? "no error text"
        return NBDClientError(operation: operation, message: text, errno: nbd_get_errno())
    }

    public var description: String { "\(operation) failed (errno \(errno)): \(message)" }
}

/// Throws the last libnbd error when a libnbd call returned -1 (any negative value).
func check<Result: BinaryInteger>(_ result: Result, _ operation: String) throws(NBDClientError) {
    if result < 0 { throw NBDClientError.last(operation) }
}

/// Returns a libnbd call's non-negative result, or throws the last libnbd error.
func checkedValue<Result: BinaryInteger>(_ result: Result, _ operation: String)
    throws(NBDClientError) -> Result
{
    if result < 0 { throw NBDClientError.last(operation) }
    return result
}
