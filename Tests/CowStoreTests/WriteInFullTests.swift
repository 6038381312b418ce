// The loop under every store write (`writeInFull`, the body of `FileDescriptor.writeFully`), fed
// scripted pwrite results: short writes continue where they stopped, EINTR is retried, other
// errors are thrown, and a write of nothing fails with EIO instead of spinning forever.

import CowStore
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Calls `writeInFull` over `byteCount` bytes with `results` as the successive pwrite results
/// (repeating the last), giving up after `limit` calls so a loop that never ends fails the
/// test instead of hanging it. Returns the error thrown, the `done` values seen, and whether
/// the limit was hit.
private func runWriteAll(byteCount: Int, results: [Int], errno code: Int32 = 0, limit: Int = 1000)
    -> (error: Errno?, calls: [Int], gaveUp: Bool)
{
    var calls: [Int] = []
    var gaveUp = false
    do {
        try writeInFull(byteCount: byteCount) { done in
            calls.append(done)
            if calls.count >= limit {
                gaveUp = true
                return byteCount - done
            }
            let result = results[min(calls.count - 1, results.count - 1)]
            if result < 0 { Glibc.errno = code }
            return result
        }
    } catch {
        return (error, calls, gaveUp)
    }
    return (nil, calls, gaveUp)
}

@Test func aWriteOfNothingFailsWithEIOInsteadOfRetryingForever() {
    let outcome = runWriteAll(byteCount: 4096, results: [0])
    #expect(!outcome.gaveUp, "the loop retried a write of nothing \(outcome.calls.count) times")
    #expect(outcome.error == .ioError)
    #expect(Array(outcome.calls.prefix(5)) == [0])
}

@Test func aWriteOfNothingAfterShortWritesFailsWithEIO() {
    let outcome = runWriteAll(byteCount: 4096, results: [1000, 96, 0])
    #expect(!outcome.gaveUp, "the loop retried a write of nothing \(outcome.calls.count) times")
    #expect(outcome.error == .ioError)
    #expect(Array(outcome.calls.prefix(5)) == [0, 1000, 1096])
}

@Test func shortWritesContinueWhereTheyStopped() {
    let outcome = runWriteAll(byteCount: 4096, results: [1000, 3000, 96])
    #expect(outcome.error == nil)
    #expect(!outcome.gaveUp)
    #expect(outcome.calls == [0, 1000, 4000])
}

@Test func anInterruptedWriteIsRetriedAndOtherErrorsAreThrown() {
    let interrupted = runWriteAll(byteCount: 10, results: [-1, -1, 10], errno: EINTR)
    #expect(interrupted.error == nil)
    #expect(interrupted.calls == [0, 0, 0])
    let failed = runWriteAll(byteCount: 10, results: [4, -1], errno: ENOSPC)
    #expect(failed.error == .noSpace)
    #expect(failed.calls == [0, 4])
}

@Test func nothingToWriteMakesNoCall() {
    let outcome = runWriteAll(byteCount: 0, results: [0])
    #expect(outcome.error == nil)
    #expect(outcome.calls.isEmpty)
}
