// Faults that tests inject into calls a test cannot make fail for real (a folder's fsync).
// Task-local, so a test that sets one affects only its own calls, not tests running beside it.

import SystemPackage

/// Errors to report instead of making a call, set by tests with `$name.withValue(...)`.
package enum InjectedFault {
    /// Reported by the next folder `fsync` in this task instead of syncing.
    @TaskLocal package static var folderSync: Errno?
}
