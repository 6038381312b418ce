// Finds and opens a store's base image and proves it is the one the store was made over.

import CowFormat
import SystemPackage

/// Opening bases by path, whatever their format.
public enum BaseLocator {
    /// Opens the image at `path` read-only, detecting its format by its first bytes: a
    /// compressed image ("COWBDLZ4"), a store ("COWBDSTR": its disk, a lower layer of a chain,
    /// under a shared lock whatever `options.lock` says), else raw; each takes `options.lock`.
    /// An NBD URI (`nbd://`, `nbd+unix://`, `nbds://`...) opens the export on that server.
    public static func openImage(at path: FilePath, options: BaseOpenOptions) throws
        -> any BlockSource
    {
        if NBDBaseImage.isURI(path.string) { return try openURI(path.string, options: options) }
        let magic = try leadingBytes(of: path)
        if magic == LZ4ImageHeader.magic {
            return try CompressedBaseImage(path: path, options: options)
        }
        if magic == StoreHeader.magic {
            return try VirtualDiskImage(lowerStorePath: path, options: options)
        }
        return try RawBaseImage(path: path, lock: options.lock)
    }

    /// Where the base `header` names may be, in the order tried: the resolved path, then the
    /// given path taken relative to the store's folder (so a chain moved as a folder still
    /// pairs up).
    public static func candidatePaths(for header: StoreHeader, storePath: FilePath) -> [String] {
        var candidates = [header.basePathResolved]
        let given = FilePath(header.basePathGiven)
        if !given.isAbsolute {
            let beside = absolutePath(storePath.removingLastComponent().pushing(given).string)
                .string
            if !candidates.contains(beside) { candidates.append(beside) }
        }
        return candidates
    }

    /// Opens the base `header` names (`candidatePaths`), the lower layer of the store at
    /// `storePath`, which joins `options.layersAbove` for the layers opened under it.
    public static func openBase(
        for header: StoreHeader, storePath: FilePath, options: BaseOpenOptions
    ) throws -> any BlockSource {
        if NBDBaseImage.isURI(header.basePathGiven) {
            return try openURI(header.basePathGiven, options: options)
        }
        let candidates = candidatePaths(for: header, storePath: storePath)
        var options = options
        let identity = try FileIdentity(of: storePath)
        if options.layersAbove.last?.identity != identity {
            options.layersAbove.append(LayerAbove(path: storePath, identity: identity))
        }
        for candidate in candidates {
            do {
                return try openImage(at: FilePath(candidate), options: options)
            } catch StoreError.open(let path, let errno)
                where errno == .noSuchFileOrDirectory && path == FilePath(candidate)
            {
                continue
            }
        }
        throw StoreError.baseMissing(path: storePath, tried: candidates)
    }

    /// Opens the NBD export `uri` names (a path turned into FilePath loses the URI's "//").
    public static func openURI(_ uri: String, options: BaseOpenOptions) throws -> any BlockSource {
        try NBDBaseImage(uri: uri, settings: options.remote, logger: options.logger)
    }

    /// Refuses a base whose size or sampled content differs from what the store recorded.
    public static func verify(
        _ base: any BlockSource, against header: StoreHeader, storePath: FilePath
    ) throws {
        guard base.byteCount == header.baseByteCount else {
            throw StoreError.baseMismatch(
                path: storePath, base: base.path,
                detail:
                    "its size is \(base.byteCount) bytes, the store expects \(header.baseByteCount)"
            )
        }
        let fingerprint = try base.fingerprint()
        guard fingerprint == header.baseFingerprint else {
            throw StoreError.baseMismatch(
                path: storePath, base: base.path,
                detail:
                    "its content fingerprint is \(fingerprint), the store expects \(header.baseFingerprint)"
            )
        }
    }
}
