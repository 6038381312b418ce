// `merge --abort`: takes back an interrupted merge into a target so the store can be served
// again. The store's chunks are untouched until a merge empties the store (state 4 in
// docs/FORMAT.md, "Merge"), so until then clearing the record gives back the disk as it was.

import CowFormat
import SystemPackage

extension StoreMerge {
    /// What an abort did.
    public struct AbortSummary: Sendable {
        /// The merge's target, as recorded.
        public var targetPath: String
        /// The target was the base itself (`--in-place`); the store is now bound to the base as
        /// it is, with its new size and fingerprint.
        public var wasInPlace: Bool
    }

    /// Clears the merge record of the store at `storePath` (under its exclusive lock).
    ///
    /// - `--into`: always safe while the store still holds its chunks: the base was never
    ///   written, so the store serves the same disk again. The target may be partly written.
    /// - `--in-place`: the base may be partly changed (held chunks copied in, grown to the disk's
    ///   size). The store's own disk is still whole: every byte the merge wrote into the base lies
    ///   in a chunk the store holds and reads from itself. But the base matches neither its old
    ///   fingerprint nor the merged one, so this needs `force`, and then binds the store to the
    ///   base as it now is; any other store over the old base is no longer valid.
    ///
    /// Refused once the merge has emptied the store (no chunks held): the data is then only in
    /// the target, and the merge can only be finished.
    public static func abort(storePath: FilePath, force: Bool) throws -> AbortSummary {
        let store = try StoreFile(path: storePath, access: .exclusiveWrite)
        defer { store.close() }
        guard let record = store.header.merge else {
            throw StoreError.invalidArgument(
                "\(storePath): no merge is under way; nothing to abort")
        }
        let finishCommand =
            "cowbd merge \(storePath) "
            + (record.isInPlace ? "--in-place" : "--into \(record.targetPath)")
        guard store.writtenChunkCount > 0 else {
            throw StoreError.invalidArgument(
                "\(storePath): the interrupted merge has already moved the store's chunks into "
                    + "\(record.targetPath) (the store holds none), so it cannot be taken back; "
                    + "finish it: \(finishCommand)")
        }
        var header = store.header
        header.setMerge(nil)
        if record.isInPlace {
            guard force else {
                throw StoreError.invalidArgument(
                    "\(storePath): the interrupted merge wrote into the base \(record.targetPath) "
                        + "itself, which may be partly changed; finish it (\(finishCommand)), or "
                        + "use --abort --force to bind the store to the base as it is now (the "
                        + "store's disk is intact; other stores over the old base are not)")
            }
            let base = try BaseLocator.openImage(at: FilePath(record.targetPath), options: .quiet)
            try store.writeHeader(
                header, reboundTo: base.byteCount, fingerprint: try base.fingerprint(),
                basePathGiven: header.basePathGiven, basePathResolved: header.basePathResolved)
        } else {
            // The base was never written by --into: it must still be the store's.
            let base = try BaseLocator.openBase(
                for: header, storePath: storePath, options: .quiet)
            try BaseLocator.verify(base, against: header, storePath: storePath)
            try store.writeHeader(header)
        }
        return AbortSummary(targetPath: record.targetPath, wasInPlace: record.isInPlace)
    }
}
