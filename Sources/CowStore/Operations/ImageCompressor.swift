// `compress`: a raw image, a compressed image or a store's virtual disk in, a cowbd-lz4 image
// out (docs/FORMAT.md, "Compressed base image"). The file is built under a temporary name,
// synced, then moved into place: an interrupted run leaves no image under the real name.

import CowFormat
import CowSupport
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Making compressed images.
public enum ImageCompressor {
    /// Most worker threads: each holds two blocks and a compressor state, so memory stays at
    /// this many times (2 x block size + 256 KiB) whatever the image's size.
    public static let maxThreadCount = 64

    /// What `compress` needs to know.
    public struct Options: Sendable {
        public var geometry: LZ4BlockGeometry
        public var level: CompressionLevel
        /// Worker threads, 1 to `maxThreadCount`.
        public var threadCount: Int
        /// Replace an existing destination (`--force`); otherwise an existing one is refused.
        public var replacesExisting: Bool
        /// Compress every block against a dictionary trained on the source (the default;
        /// `--no-dictionary` turns it off).
        public var usesDictionary: Bool

        public init(
            geometry: LZ4BlockGeometry, level: CompressionLevel, threadCount: Int,
            replacesExisting: Bool, usesDictionary: Bool = true
        ) {
            self.geometry = geometry
            self.level = level
            self.threadCount = threadCount
            self.replacesExisting = replacesExisting
            self.usesDictionary = usesDictionary
        }
    }

    /// How far a compression has come.
    public struct Progress: Sendable {
        /// Uncompressed bytes written so far, and in all.
        public var inputByteCount: UInt64
        public var totalInputByteCount: UInt64
        /// Bytes of the new image so far (header and index included).
        public var outputByteCount: UInt64
    }

    /// What a finished compression made.
    public struct Summary: Sendable {
        public var header: LZ4ImageHeader
        /// The source's size in bytes.
        public var inputByteCount: UInt64
        /// The new image's size in bytes.
        public var outputByteCount: UInt64
        public var zeroBlockCount: UInt64
        /// Blocks stored as they are, because LZ4 could not make them smaller.
        public var rawBlockCount: UInt64
        /// Bytes of the shared dictionary (0: none).
        public var dictionaryByteCount: Int
    }

    /// Opens what `compress` reads: a COW store's virtual disk (read-only, under the store's
    /// exclusive lock) if `path` is a store, otherwise the image there (raw or compressed).
    public static func openSource(at path: FilePath, options: BaseOpenOptions = .quiet) throws
        -> any BlockSource
    {
        if try BaseLocator.leadingBytes(of: path) == StoreHeader.magic {
            return try VirtualDiskImage(storePath: path, options: options)
        }
        return try BaseLocator.openImage(at: path, options: options)
    }

    /// Compresses every byte of `source` into a new image at `destination`. Refuses an
    /// existing destination unless `options.replacesExisting`. Calls `progress` on this thread
    /// about every `progressIntervalSeconds` while the workers run.
    public static func compress(
        _ source: any BlockSource, to destination: FilePath, options: Options,
        progressIntervalSeconds: Double = 0.25, progress: (Progress) -> Void = { _ in }
    ) throws -> Summary {
        precondition((1...maxThreadCount).contains(options.threadCount), "thread count checked")
        guard source.byteCount > 0, source.byteCount <= LZ4ImageHeader.maxVirtualByteCount else {
            throw StoreError.invalidArgument(
                "\(source.path): cannot compress an image of \(source.byteCount) bytes "
                    + "(1 byte to 1 EiB)")
        }
        let indexByteCount = LZ4ImageHeader.layout(
            geometry: options.geometry, virtualByteCount: source.byteCount
        ).indexByteCount
        guard indexByteCount <= LZ4ImageHeader.maxIndexByteCount else {
            throw StoreError.invalidArgument(
                "\(source.path): \(source.byteCount) bytes in blocks of "
                    + "\(options.geometry.blockByteCount) need an index of \(indexByteCount) bytes, "
                    + "over the limit of \(LZ4ImageHeader.maxIndexByteCount); use larger blocks")
        }
        // Checked again atomically when the file is linked into place; this fails early.
        if !options.replacesExisting && access(destination.string, F_OK) == 0 {
            throw StoreError.exists(path: destination)
        }
        let fingerprint = try source.fingerprint()
        let dictionary = options.usesDictionary ? try trainDictionary(for: source) : []
        var result: (header: LZ4ImageHeader, totals: CompressionJob.Totals)?
        try AtomicFile.write(to: destination, replacing: options.replacesExisting) { descriptor in
            let blockCount = options.geometry.blockCount(covering: source.byteCount)
            let workerCount = Int(min(UInt64(options.threadCount), blockCount))
            let job = CompressionJob(
                source: source, descriptor: descriptor, destination: destination,
                options: options, dictionary: dictionary, workerCount: workerCount)
            let threads = (0..<workerCount).map { _ in JoinableThread { job.runWorker() } }
            job.waitForWorkers(intervalSeconds: progressIntervalSeconds) { totals in
                progress(
                    Progress(
                        inputByteCount: totals.inputByteCount,
                        totalInputByteCount: source.byteCount,
                        outputByteCount: job.layout.dataByteOffset + UInt64(dictionary.count)
                            + totals.storedByteCount))
            }
            for thread in threads { thread.join() }
            result = try job.finish(fingerprint: fingerprint)
        }
        guard let (header, totals) = result else {
            preconditionFailure("AtomicFile.write returned without running its body")
        }
        return Summary(
            header: header, inputByteCount: source.byteCount,
            outputByteCount: header.fileByteCount, zeroBlockCount: totals.zeroBlockCount,
            rawBlockCount: totals.rawBlockCount, dictionaryByteCount: dictionary.count)
    }
}
