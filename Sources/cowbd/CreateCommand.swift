// `cowbd create`: makes an empty store over a base image. Parses the sizes; the format and
// the crash-safe, no-overwrite create are CowStore's (StoreFile+Create.swift).

import ArgumentParser
import CowFormat
import CowStore
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create an empty COW store over a read-only base image.",
        discussion: """
            The new store is empty: every read comes from the base until a chunk is written. \
            cowbd never writes to the base, and the base must not change while the store \
            lives: the store records its size and a content fingerprint, and refuses a base \
            that differs.

            The base may be a raw image, a compressed image (cowbd compress) or another \
            store: then the new store is a layer over that store's disk (a chain, at most \
            64 stores deep). A lower store is opened read-only under a shared lock, so many \
            stores can be served over one lower at once, and nothing may write it while one \
            is open; its chunk size may differ from the new store's.

            The base path is recorded as you typed it and as an absolute path. If the base is \
            not at the absolute path later, a relative path is tried beside the store, so a \
            store and its base can be moved together.

            Sizes are bytes, or a number with K, M, G or T (also KiB, MiB, ...; all 1024-based).

            The store is a sparse file: the disk size plus a small header and bitmap, of which \
            only written chunks take space. It needs a filesystem that can punch holes (ext4, \
            xfs, btrfs, tmpfs); create fails and says so on one that cannot.

            Examples:
              cowbd create disk.cow --base golden.img
              cowbd create big.cow --base golden.img --size 100G --chunk-size 64K
              cowbd create vm1.cow --base template.cow

            Exit status: 0 created, 1 not created (the reason on stderr; nothing is left \
            behind), 64 bad option value.
            """)

    @Argument(help: ArgumentHelp("The store file to create; it must not exist.", valueName: "cow"))
    var store: String

    @Option(
        help: ArgumentHelp(
            "The read-only base: a raw image file or block device, a compressed image, a store, "
                + "or an NBD URI (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://...).",
            valueName: "path"))
    var base: String

    @Option(
        help: ArgumentHelp(
            "The copy-on-write unit: a power of two from 4K to 1M. "
                + "(default: \((1 << ChunkGeometry.defaultShift) >> 10)K)",
            discussion:
                "A write into an untouched chunk copies the rest of the chunk from the base, "
                + "so 4K chunks never copy for 4K-aligned writes; larger chunks mean a "
                + "smaller bitmap.",
            valueName: "size"))
    var chunkSize: String?

    @Option(
        help: ArgumentHelp(
            "The disk size, at least the base's; past the base the disk reads as zeros. "
                + "(default: the base's size)",
            valueName: "size"))
    var size: String?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try exitingOnError(status: ExitStatus.usage) {
            _ = try geometry()
            _ = try virtualByteCount()
        }
    }

    func run() throws {
        let geometry = try geometry()
        let virtualByteCount = try virtualByteCount()
        let summary = try exitingOnError {
            let image =
                NBDBaseImage.isURI(base)
                ? try BaseLocator.openURI(base, options: baseOpenOptions())
                : try BaseLocator.openImage(at: FilePath(base), options: baseOpenOptions())
            try LayerChain.checkRoom(over: image, newStorePath: FilePath(store))
            let header = try StoreFile.create(
                at: FilePath(store), base: image, basePathGiven: base,
                options: .init(
                    geometry: geometry, virtualByteCount: virtualByteCount,
                    createdUnixSeconds: UInt64(clamping: time(nil))))
            // A new store holds nothing yet: no chunk written, no data allocated.
            var summary = StoreSummary(
                path: store, header: header, writtenChunkCount: 0, allocatedByteCount: 0,
                base: .ok(image))
            summary.chain = LayerChain.list(topStorePath: FilePath(store))
            return summary
        }
        if output.json {
            print(summary.json.rendered())
        } else {
            let header = summary.header
            print(
                "\(store): created, a \(ByteSize.describe(header.virtualByteCount)) disk over "
                    + "\(header.basePathResolved) (\(summary.base.image?.kindName ?? "unknown")), "
                    + "\(ByteSize.describe(header.geometry.chunkByteCount)) chunks")
        }
    }

    /// `--chunk-size` as a geometry; the default when absent.
    private func geometry() throws -> ChunkGeometry {
        try ChunkGeometry(option: "--chunk-size", chunkSize, sizes: "from 4K to 1M")
    }

    /// `--size` in bytes; nil (the base's size) when absent.
    private func virtualByteCount() throws -> UInt64? {
        guard let size else { return nil }
        do {
            return try ByteSize.parse(size)
        } catch {
            throw ValidationError("--size: \(error)")
        }
    }
}
