// A store's header pointed at another lower layer: one that holds the same bytes (a collapse,
// live or offline: same base size and fingerprint, another path), or the disk a merge wrote.
// Only the header is written; making the new layer durable first is the caller's
// (docs/FORMAT.md, "Live collapse", "Merge").

import CowFormat
import SystemPackage

extension StoreFile {
    /// The header as it is on disk now: the one read at open, or the last rebind's. Later header
    /// writes (checkpoints, hydration) start from it, so they keep the new binding.
    public var currentHeader: StoreHeader { reboundHeader.withLock { $0 } ?? header }

    /// Rewrites the header to name the lower layer at `basePathGiven` (`basePathResolved`
    /// absolute), which the caller has checked holds the same bytes as the one named now: the
    /// recorded size and fingerprint stay. One 4 KiB `pwrite` and `fdatasync`, under the flush
    /// lock, so no checkpoint or hydration header write interleaves with it.
    func rebindBase(basePathGiven: String, basePathResolved: String) throws {
        try flushLock.withLock { _ in
            let current = currentHeader
            let rebound = try writeHeader(
                current, reboundTo: current.baseByteCount, fingerprint: current.baseFingerprint,
                basePathGiven: basePathGiven, basePathResolved: basePathResolved)
            reboundHeader.withLock { $0 = rebound }
        }
    }

    /// Writes `header` (as `writeHeader(_:)` does) bound to another lower layer: one whose
    /// disk is `baseByteCount` bytes with `fingerprint`, named `basePathGiven`
    /// (`basePathResolved` absolute). Every rebind of a store (live collapse, offline collapse,
    /// the end of a merge or its abort) writes its header here. Returns the header written.
    @discardableResult
    func writeHeader(
        _ header: StoreHeader, reboundTo baseByteCount: UInt64, fingerprint: BaseFingerprint,
        basePathGiven: String, basePathResolved: String
    ) throws -> StoreHeader {
        var rebound = header
        do throws(FormatError) {
            try rebound.rebind(
                baseByteCount: baseByteCount, fingerprint: fingerprint,
                basePathGiven: basePathGiven, basePathResolved: basePathResolved)
        } catch {
            throw StoreError.format(path: path, error)
        }
        return try writeHeader(rebound)
    }
}
