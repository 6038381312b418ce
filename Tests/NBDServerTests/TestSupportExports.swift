// Every file of these tests sees TestSupport (TestFailure, SplitMix64, waitUntil, the process
// plumbing) without importing it one file at a time.

@_exported import TestSupport
