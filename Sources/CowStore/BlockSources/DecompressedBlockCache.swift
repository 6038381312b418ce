// A bounded cache of decompressed blocks, shared by every reader of one compressed image.
// A block wanted by several readers at once is loaded once: the others wait for it. What a
// block holds and how it is loaded are the caller's; this file only keeps slots.

#if canImport(Glibc)
    import Glibc
#endif

/// Fixed slots of one block each, evicted by CLOCK (second chance), allocated on first use.
///
/// A slot is `empty`, `loading` (one thread fills it, without the lock; others wanting the
/// block wait) or `ready` (readers copy from it while they hold a pin). Pinned and loading
/// slots are never evicted, so a slot's bytes never change under a reader.
///
/// `@unchecked Sendable`: every field but the immutable ones is guarded by `mutex`; a slot's
/// bytes are written only by its loader (state `loading`) and read only under a pin.
final class DecompressedBlockCache: @unchecked Sendable {
    /// Fewest slots, whatever the size asked for: enough that a few readers never wait.
    static let minimumSlotCount = 8

    private enum SlotState {
        case empty
        case loading
        case ready
    }

    private struct Slot {
        var blockIndex: UInt64 = 0
        var state = SlotState.empty
        var pinCount = 0
        /// CLOCK's reference bit: set by each use, cleared as the hand passes.
        var isReferenced = false
        var buffer: UnsafeMutableRawBufferPointer?
        /// Bytes at the start of the buffer that hold the block (a prefix, or all of it).
        var validByteCount = 0
    }

    /// Bytes in one slot's buffer: a block plus what in-place decompression needs.
    let slotByteCount: Int
    let slotCount: Int
    private var slots: [Slot]
    private var slotIndexOfBlock: [UInt64: Int] = [:]
    private var clockHand = 0
    private var waiterCount = 0
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let changed: UnsafeMutablePointer<pthread_cond_t>

    /// A cache of about `byteCount` bytes of slots of `slotByteCount` bytes, at least
    /// `minimumSlotCount` of them and never more than `maxSlotCount` (the image's blocks).
    init(byteCount: Int, slotByteCount: Int, maxSlotCount: Int) {
        precondition(slotByteCount > 0 && maxSlotCount > 0)
        self.slotByteCount = slotByteCount
        slotCount = min(max(byteCount / slotByteCount, Self.minimumSlotCount), maxSlotCount)
        slots = Array(repeating: Slot(), count: slotCount)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        changed = .allocate(capacity: 1)
        pthread_cond_init(changed, nil)
    }

    deinit {
        for slot in slots { slot.buffer?.deallocate() }
        pthread_cond_destroy(changed)
        changed.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` on block `blockIndex`'s slot buffer, of which at least the first
    /// `neededByteCount` bytes hold the block. On a miss, `load` fills the buffer first (once,
    /// however many threads ask at the same moment) and returns how many bytes it filled: at
    /// least `neededByteCount`, or the whole block when its second argument says so (a slot
    /// that holds a shorter prefix is loaded again whole, once no reader uses it). If `load`
    /// throws, the slot is dropped and the error goes to this caller (a waiter then tries the
    /// load itself).
    func withBlock<Result>(
        _ blockIndex: UInt64, neededByteCount: Int,
        load: (UnsafeMutableRawBufferPointer, _ wholeBlock: Bool) throws -> Int,
        _ body: (UnsafeRawBufferPointer) -> Result
    ) throws -> Result {
        let acquired = acquire(blockIndex, neededByteCount: neededByteCount, waits: true)
        guard let acquired else { preconditionFailure("a waiting acquire always gets a slot") }
        let result = try use(
            acquired, of: blockIndex, neededByteCount: neededByteCount, load: load, body)
        guard let result else { preconditionFailure("a load that returns fills the slot") }
        return result
    }

    /// Runs `body` on block `blockIndex`'s bytes only if at least its first `neededByteCount`
    /// are loaded; nil otherwise.
    func withCachedBlock<Result>(
        _ blockIndex: UInt64, neededByteCount: Int, _ body: (UnsafeRawBufferPointer) -> Result
    ) -> Result? {
        pthread_mutex_lock(mutex)
        guard let slotIndex = slotIndexOfBlock[blockIndex], slots[slotIndex].state == .ready,
            slots[slotIndex].validByteCount >= neededByteCount, let buffer = slots[slotIndex].buffer
        else {
            pthread_mutex_unlock(mutex)
            return nil
        }
        slots[slotIndex].pinCount += 1
        slots[slotIndex].isReferenced = true
        pthread_mutex_unlock(mutex)
        defer { unpin(slotIndex) }
        return body(UnsafeRawBufferPointer(buffer))
    }

    /// As `withBlock`, but never waits: nil, leaving the cache as it was, if another thread is
    /// loading the block, every slot is in use, or `load` returns nil (it could not fill the
    /// buffer without waiting, or the block is damaged: a caller that may wait then learns
    /// why). `load` runs on this thread, so it must not wait either.
    func withBlockIfLoadable<Result>(
        _ blockIndex: UInt64, neededByteCount: Int,
        load: (UnsafeMutableRawBufferPointer, _ wholeBlock: Bool) -> Int?,
        _ body: (UnsafeRawBufferPointer) -> Result
    ) -> Result? {
        guard let acquired = acquire(blockIndex, neededByteCount: neededByteCount, waits: false)
        else { return nil }
        return use(acquired, of: blockIndex, neededByteCount: neededByteCount, load: load, body)
    }

    /// Runs `body` on the pinned slot `acquired` of block `blockIndex`, first filling it with
    /// `load` if it was claimed for this caller. A load that throws or returns nil drops the
    /// slot (the error goes to this caller; nil comes back as nil).
    private func use<Result>(
        _ acquired: AcquiredSlot, of blockIndex: UInt64, neededByteCount: Int,
        load: (UnsafeMutableRawBufferPointer, _ wholeBlock: Bool) throws -> Int?,
        _ body: (UnsafeRawBufferPointer) -> Result
    ) rethrows -> Result? {
        let (slotIndex, buffer, mustLoad, wholeBlock) = acquired
        if mustLoad {
            let validByteCount: Int?
            do {
                validByteCount = try load(buffer, wholeBlock)
            } catch {
                finishLoad(slotIndex, blockIndex, validByteCount: 0)
                throw error
            }
            guard let validByteCount else {
                finishLoad(slotIndex, blockIndex, validByteCount: 0)
                return nil
            }
            precondition(validByteCount >= neededByteCount, "load filled less than needed")
            finishLoad(slotIndex, blockIndex, validByteCount: validByteCount)
        }
        defer { unpin(slotIndex) }
        return body(UnsafeRawBufferPointer(buffer))
    }

    /// Blocks now loaded, for tests and stats.
    var readyBlockCount: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return slots.count { $0.state == .ready }
    }

    /// A slot `acquire` pinned for a reader.
    private typealias AcquiredSlot = (
        slotIndex: Int, buffer: UnsafeMutableRawBufferPointer, mustLoad: Bool, wholeBlock: Bool
    )

    /// Pins the block's slot, waiting while another thread loads it or while every slot is
    /// in use; with `waits` false, nil instead of waiting. `mustLoad`: the slot was just
    /// claimed for this caller to fill; `wholeBlock`: fill all of it (the slot held a prefix
    /// too short for this reader).
    private func acquire(_ blockIndex: UInt64, neededByteCount: Int, waits: Bool) -> AcquiredSlot? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let slotIndex = slotIndexOfBlock[blockIndex] {
                let slot = slots[slotIndex]
                if slot.state == .ready, let buffer = slot.buffer {
                    if slot.validByteCount >= neededByteCount {
                        slots[slotIndex].pinCount += 1
                        slots[slotIndex].isReferenced = true
                        return (slotIndex, buffer, false, false)
                    }
                    if slot.pinCount == 0 {
                        // Reloading rewrites the buffer, so no reader may be using it.
                        slots[slotIndex].state = .loading
                        slots[slotIndex].pinCount = 1
                        slots[slotIndex].isReferenced = true
                        return (slotIndex, buffer, true, true)
                    }
                }
                guard waits else { return nil }
                waitForChange()  // another thread is loading it, or reading a short prefix
                continue
            }
            guard let slotIndex = takeVictim() else {
                guard waits else { return nil }
                waitForChange()  // every slot is pinned or loading
                continue
            }
            if slots[slotIndex].state == .ready {
                slotIndexOfBlock[slots[slotIndex].blockIndex] = nil
            }
            let buffer =
                slots[slotIndex].buffer
                ?? .allocate(byteCount: slotByteCount, alignment: 4096)
            slots[slotIndex] = Slot(
                blockIndex: blockIndex, state: .loading, pinCount: 1, isReferenced: true,
                buffer: buffer)
            slotIndexOfBlock[blockIndex] = slotIndex
            return (slotIndex, buffer, true, false)
        }
    }

    /// A slot that is neither pinned nor loading, preferring empty ones; nil if none is.
    /// Called with the mutex held.
    private func takeVictim() -> Int? {
        // Two turns of the hand: the first may only clear reference bits.
        for _ in 0..<(2 * slotCount) {
            let slotIndex = clockHand
            clockHand = (clockHand + 1) % slotCount
            let slot = slots[slotIndex]
            guard slot.pinCount == 0, slot.state != .loading else { continue }
            if slot.state == .ready && slot.isReferenced {
                slots[slotIndex].isReferenced = false
                continue
            }
            return slotIndex
        }
        return nil
    }

    /// Ends a load: `validByteCount` 0 means it failed and the slot is dropped.
    private func finishLoad(_ slotIndex: Int, _ blockIndex: UInt64, validByteCount: Int) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        precondition(
            slots[slotIndex].blockIndex == blockIndex && slots[slotIndex].state == .loading)
        if validByteCount > 0 {
            slots[slotIndex].state = .ready
            slots[slotIndex].validByteCount = validByteCount
        } else {
            slots[slotIndex].state = .empty
            slots[slotIndex].pinCount = 0
            slotIndexOfBlock[blockIndex] = nil
        }
        if waiterCount > 0 { pthread_cond_broadcast(changed) }
    }

    private func unpin(_ slotIndex: Int) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        slots[slotIndex].pinCount -= 1
        precondition(slots[slotIndex].pinCount >= 0, "slot unpinned more often than pinned")
        if slots[slotIndex].pinCount == 0 && waiterCount > 0 { pthread_cond_broadcast(changed) }
    }

    /// Waits for a load to finish or a slot to be unpinned. Called with the mutex held.
    private func waitForChange() {
        waiterCount += 1
        pthread_cond_wait(changed, mutex)
        waiterCount -= 1
    }
}
