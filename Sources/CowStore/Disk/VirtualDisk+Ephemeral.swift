// A throwaway overlay (`serve --ephemeral`): any image (raw, compressed, a store) served with
// its writes going to a store that has no name from the start, so nothing of it survives the
// process, whether it exits or is killed. The image itself is only read.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension VirtualDisk {
    /// Opens the image at `imagePath` read-only (a store as a lower layer, under its shared
    /// lock) and a new empty store over it in `folder`: an `O_TMPFILE` file (or one unlinked at
    /// once where the filesystem lacks it), reopened through /proc/self/fd, so it is freed when
    /// the process ends. `createdUnixSeconds` goes in its header.
    public static func openEphemeral(
        imagePath: FilePath, folder: FilePath, options: BaseOpenOptions = .quiet,
        createdUnixSeconds: UInt64 = 0
    ) throws -> VirtualDisk {
        let image = try BaseLocator.openImage(at: imagePath, options: options)
        try LayerChain.checkRoom(over: image, newStorePath: imagePath)
        guard image.byteCount > 0 else {
            throw StoreError.invalidArgument("\(imagePath): the image is empty; nothing to serve")
        }
        let resolved = absolutePath(imagePath.string).string
        let header: StoreHeader
        do {
            header = try StoreHeader(
                geometry: try ChunkGeometry(shift: ChunkGeometry.defaultShift),
                virtualByteCount: image.byteCount, baseByteCount: image.byteCount,
                baseFingerprint: try image.fingerprint(),
                fingerprintScheme: BaseFingerprintPlan.scheme, basePathGiven: resolved,
                basePathResolved: resolved, createdUnixSeconds: createdUnixSeconds)
        } catch let error as FormatError {
            throw StoreError.format(path: imagePath, error)
        }
        let store = try AtomicFile.withScratchFile(in: folder) { descriptor in
            do {
                try descriptor.setByteCount(header.dataByteOffset + header.virtualByteCount)
                let bytes = header.encoded()
                try bytes.withUnsafeBytes { try descriptor.writeFully(at: 0, from: $0) }
            } catch let error as Errno {
                throw StoreError.io(
                    path: folder, operation: "write a temporary store", byteOffset: 0, error)
            }
            // A second open file description of the same unnamed file: it outlives the
            // scratch descriptor, and the store owns (and locks) it like any store's.
            return try StoreFile(
                path: FilePath("/proc/self/fd/\(descriptor.rawValue)"), access: .exclusiveWrite,
                logger: options.logger)
        }
        return VirtualDisk(store: store, base: image, logger: options.logger)
    }
}
