// Store I/O for tests: a recorder of every change and sync a store makes to its file, and a
// fault injector that fails chosen calls. Both wrap the real `FileStoreIO` (StoreIO.swift).

import CowFormat
import CowStore
import Synchronization
import SystemPackage

/// The kinds of call a `StoreIO` receives.
enum StoreIOOperation: Equatable, Sendable {
    case read, readIfCached, write, punchHole, zeroRange, nextData, nextHole
    case synchronizeData, synchronizeAll, byteCount, allocatedByteCount, setByteCount
    case allocateAhead
}

/// One change or sync, as a crash-state explorer would replay it.
enum StoreIOEvent: Equatable, Sendable {
    case write(byteOffset: UInt64, bytes: [UInt8])
    case punchHole(byteOffset: UInt64, byteCount: UInt64)
    case zeroRange(byteOffset: UInt64, byteCount: UInt64)
    case setByteCount(UInt64)
    case synchronizeData
    case synchronizeAll
}

/// Passes every call to `inner`, after asking `fault` whether to fail it instead, and records
/// every change and sync that succeeded, in order.
final class TestStoreIO: StoreIO {
    let inner: any StoreIO
    private let state = Mutex<State>(State())

    private struct State {
        var events: [StoreIOEvent] = []
        var fault: @Sendable (StoreIOOperation, UInt64) -> Errno? = { _, _ in nil }
        var calls: [StoreIOOperation] = []
    }

    init(wrapping inner: any StoreIO) { self.inner = inner }

    /// The changes and syncs so far.
    var events: [StoreIOEvent] { state.withLock { $0.events } }
    /// Every call so far, reads included.
    var calls: [StoreIOOperation] { state.withLock { $0.calls } }

    /// From now on, fails a call when `fault` (given its kind and byte offset) returns an errno.
    func inject(_ fault: @escaping @Sendable (StoreIOOperation, UInt64) -> Errno?) {
        state.withLock { $0.fault = fault }
    }

    private func check(_ operation: StoreIOOperation, _ byteOffset: UInt64 = 0) throws(Errno) {
        let fault = state.withLock {
            $0.calls.append(operation)
            return $0.fault
        }
        if let errno = fault(operation, byteOffset) { throw errno }
    }

    private func record(_ event: StoreIOEvent) { state.withLock { $0.events.append(event) } }

    func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno)
        -> Int
    {
        try check(.read, byteOffset)
        return try inner.read(at: byteOffset, into: buffer)
    }

    func readIfCached(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        do { try check(.readIfCached, byteOffset) } catch { return false }
        return inner.readIfCached(at: byteOffset, into: buffer)
    }

    func write(at byteOffset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Errno) {
        try check(.write, byteOffset)
        try inner.write(at: byteOffset, from: buffer)
        record(.write(byteOffset: byteOffset, bytes: Array(buffer)))
    }

    func punchHole(at byteOffset: UInt64, byteCount: UInt64) throws(Errno) {
        try check(.punchHole, byteOffset)
        try inner.punchHole(at: byteOffset, byteCount: byteCount)
        record(.punchHole(byteOffset: byteOffset, byteCount: byteCount))
    }

    func zeroRange(at byteOffset: UInt64, byteCount: UInt64) throws(Errno) {
        try check(.zeroRange, byteOffset)
        try inner.zeroRange(at: byteOffset, byteCount: byteCount)
        record(.zeroRange(byteOffset: byteOffset, byteCount: byteCount))
    }

    func nextData(from byteOffset: UInt64) throws(Errno) -> UInt64? {
        try check(.nextData, byteOffset)
        return try inner.nextData(from: byteOffset)
    }

    func nextHole(from byteOffset: UInt64) throws(Errno) -> UInt64 {
        try check(.nextHole, byteOffset)
        return try inner.nextHole(from: byteOffset)
    }

    func synchronizeData() throws(Errno) {
        try check(.synchronizeData)
        try inner.synchronizeData()
        record(.synchronizeData)
    }

    func synchronizeAll() throws(Errno) {
        try check(.synchronizeAll)
        try inner.synchronizeAll()
        record(.synchronizeAll)
    }

    func byteCount() throws(Errno) -> UInt64 {
        try check(.byteCount)
        return try inner.byteCount()
    }

    func allocatedByteCount() throws(Errno) -> UInt64 {
        try check(.allocatedByteCount)
        return try inner.allocatedByteCount()
    }

    func setByteCount(_ byteCount: UInt64) throws(Errno) {
        try check(.setByteCount, byteCount)
        try inner.setByteCount(byteCount)
        record(.setByteCount(byteCount))
    }

    func adviseWillNeed(at byteOffset: UInt64, byteCount: UInt64) {
        inner.adviseWillNeed(at: byteOffset, byteCount: byteCount)
    }

    /// Counted, not recorded: it changes no byte, so no crash state depends on it.
    func allocateAhead(at byteOffset: UInt64, byteCount: UInt64) {
        state.withLock { $0.calls.append(.allocateAhead) }
        inner.allocateAhead(at: byteOffset, byteCount: byteCount)
    }
}

/// Opens the store at `path` for writing, with its base, as a disk whose every store I/O goes
/// through the returned `TestStoreIO`.
func openDiskWithTestIO(at path: String) throws -> (VirtualDisk, TestStoreIO) {
    var made: TestStoreIO?
    let store = try StoreFile(path: FilePath(path), access: .exclusiveWrite) { inner in
        let wrapper = TestStoreIO(wrapping: inner)
        made = wrapper
        return wrapper
    }
    guard let io = made else { preconditionFailure("the store did not ask for its I/O") }
    let base = try BaseLocator.openBase(
        for: store.header, storePath: FilePath(path), options: .quiet)
    return (VirtualDisk(store: store, base: base, logger: .init(label: "cowbd.test")), io)
}
