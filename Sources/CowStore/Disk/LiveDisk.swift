// The disk a server serves, which a live snapshot replaces while requests run: each request
// takes the current one once (an atomic load) and keeps it to the end; a request that took the
// one a snapshot froze finds its successor (VirtualDisk.apply). Old disks stay alive as the
// lower layers of the new ones, so a reference taken here never dangles.

import CowSupport
import Synchronization
import SystemPackage

/// The served disk, swapped in place by a live snapshot.
public final class LiveDisk: Sendable {
    /// Unretained: every disk ever current is kept alive by `disks`.
    @usableFromInline let currentDisk: Atomic<Unmanaged<VirtualDisk>>
    private let disks: Locked<[VirtualDisk]>
    /// Serialises the commands that change the store's layout or checkpoints (control
    /// requests may come from several clients at once).
    private let changeLock = Locked<Void>(())

    public init(_ disk: VirtualDisk) {
        currentDisk = Atomic(Unmanaged.passUnretained(disk))
        disks = Locked([disk])
    }

    /// The disk requests go to now. Inlinable: every request takes it, and a call into this
    /// module for one atomic load cost more than the load.
    @inlinable public var current: VirtualDisk {
        currentDisk.load(ordering: .acquiring).takeUnretainedValue()
    }

    /// Runs `body` with the current disk, with no other change of layout or checkpoints at
    /// the same time (a checkpoint must not be recorded on a disk a snapshot just froze).
    public func whileChanging<Result>(_ body: (VirtualDisk) throws -> Result) rethrows -> Result {
        try changeLock.withLock { _ in try body(current) }
    }

    /// `StoreSnapshot.runLive` on the current disk, installing the disk over the new top.
    public func snapshot(
        storePath: FilePath, layerPath: FilePath,
        createdUnixSeconds: UInt64
    ) throws -> StoreSnapshot.Summary {
        try whileChanging { disk in
            try StoreSnapshot.runLive(
                disk: disk, storePath: storePath, layerPath: layerPath,
                createdUnixSeconds: createdUnixSeconds
            ) { next in
                disks.withLock { $0.append(next) }
                currentDisk.store(Unmanaged.passUnretained(next), ordering: .releasing)
            }
        }
    }
}
