// A served store's header pointed at another lower layer that holds the same bytes (a live
// collapse): same base size and fingerprint, another path. Only the header is written; making
// the new layer durable first is the caller's (docs/FORMAT.md, "Live collapse").

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
            var rebound = currentHeader
            do throws(FormatError) {
                try rebound.rebind(
                    baseByteCount: rebound.baseByteCount, fingerprint: rebound.baseFingerprint,
                    basePathGiven: basePathGiven, basePathResolved: basePathResolved)
            } catch {
                throw StoreError.format(path: path, error)
            }
            rebound.setHasCheckpoints(checkpoints.withLock { $0.table != nil })
            rebound.setHasHydration(hydration.withLock { $0 != nil })
            try writeHeaderBytes(rebound)
            reboundHeader.withLock { $0 = rebound }
        }
    }
}
