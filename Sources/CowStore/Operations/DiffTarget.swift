// Where `cowbd import-diff` writes: a raw image (file or block device) or a COW store (through
// VirtualDisk, so its copy-up and crash-safety rules hold). Each says which base it holds, so
// a diff made for another base can be refused.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A destination for the extents of a diff.
protocol DiffTarget: AnyObject {
    var path: FilePath { get }
    /// "raw" or "cow", for messages.
    var kindName: String { get }
    /// Size of the disk the target holds now.
    var byteCount: UInt64 { get }
    /// Size and fingerprint of the base the target holds: for a raw image, itself.
    var baseByteCount: UInt64 { get }
    func baseFingerprint() throws -> BaseFingerprint
    /// The fingerprint of the disk the target presents now (for a raw image, the same).
    func diskFingerprint() throws -> BaseFingerprint
    /// Whether the target can take a diff of `virtualByteCount` bytes (a raw file can grow).
    func canGrow(to virtualByteCount: UInt64) -> Bool
    /// Called once before the first write, after the whole diff has been verified.
    func prepare(virtualByteCount: UInt64) throws
    func write(at byteOffset: UInt64, from data: UnsafeRawBufferPointer) throws
    func writeZeroes(at byteOffset: UInt64, byteCount: UInt64) throws
    /// Makes everything written so far durable.
    func sync() throws
    /// Makes everything written durable and lets go of the target.
    func finish() throws
}

/// Opens `path` as a COW store if it starts with the store magic, else as a raw image.
func openDiffTarget(at path: FilePath) throws -> any DiffTarget {
    let probe: FileDescriptor
    do { probe = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec]) } catch {
        throw StoreError.open(path: path, error as? Errno ?? .ioError)
    }
    var magic = [UInt8](repeating: 0, count: StoreHeader.magic.count)
    let done = (try? magic.withUnsafeMutableBytes { try probe.readUpToFully(at: 0, into: $0) }) ?? 0
    try? probe.close()
    if done == magic.count && magic == StoreHeader.magic {
        return StoreDiffTarget(disk: try VirtualDisk.open(storePath: path))
    }
    return try RawDiffTarget(path: path)
}

/// A COW store: the diff lands in its store, as if a client had written it.
final class StoreDiffTarget: DiffTarget {
    let disk: VirtualDisk
    let scratch: ChunkScratch
    var path: FilePath { disk.store.path }
    var kindName: String { "cow" }
    var byteCount: UInt64 { disk.byteCount }
    var baseByteCount: UInt64 { disk.store.header.baseByteCount }

    init(disk: VirtualDisk) {
        self.disk = disk
        scratch = disk.makeScratch()
    }

    func baseFingerprint() throws -> BaseFingerprint { disk.store.header.baseFingerprint }
    func diskFingerprint() throws -> BaseFingerprint { try disk.fingerprint() }
    func canGrow(to virtualByteCount: UInt64) -> Bool { virtualByteCount == byteCount }
    func prepare(virtualByteCount: UInt64) throws {}

    func write(at byteOffset: UInt64, from data: UnsafeRawBufferPointer) throws {
        try disk.write(at: byteOffset, from: data, scratch: scratch)
    }

    func writeZeroes(at byteOffset: UInt64, byteCount: UInt64) throws {
        try disk.writeZeroes(at: byteOffset, byteCount: byteCount, scratch: scratch)
    }

    func sync() throws { try disk.flush() }

    func finish() throws {
        try sync()
        disk.close()
    }
}

/// A raw image file or block device, written in place.
final class RawDiffTarget: DiffTarget {
    let path: FilePath
    let descriptor: FileDescriptor
    let isRegularFile: Bool
    private(set) var byteCount: UInt64
    var kindName: String { "raw" }
    var baseByteCount: UInt64 { byteCount }
    private var canPunch = true

    init(path: FilePath) throws {
        self.path = path
        descriptor = try FileDescriptor.openLockedForWriting(path)
        var status = Glibc.stat()
        guard fstat(descriptor.rawValue, &status) == 0 else {
            try? descriptor.close()
            throw StoreError.io(
                path: path, operation: "fstat", byteOffset: 0, Errno(rawValue: Glibc.errno))
        }
        isRegularFile = status.st_mode & S_IFMT == S_IFREG
        do { byteCount = try descriptor.byteCount() } catch {
            try? descriptor.close()
            throw StoreError.io(path: path, operation: "size", byteOffset: 0, error)
        }
    }

    deinit { try? descriptor.close() }

    /// The fingerprint TARGET would have as a base: the same sampling plan as `create`'s.
    func baseFingerprint() throws -> BaseFingerprint {
        try RawBaseImage(path: path, lock: .none).fingerprint()
    }

    func diskFingerprint() throws -> BaseFingerprint { try baseFingerprint() }

    func canGrow(to virtualByteCount: UInt64) -> Bool {
        virtualByteCount == byteCount || (isRegularFile && virtualByteCount > byteCount)
    }

    func prepare(virtualByteCount: UInt64) throws {
        guard virtualByteCount > byteCount else { return }
        do { try descriptor.setByteCount(virtualByteCount) } catch {
            throw StoreError.io(
                path: path, operation: "ftruncate", byteOffset: virtualByteCount, error)
        }
        byteCount = virtualByteCount
    }

    func write(at byteOffset: UInt64, from data: UnsafeRawBufferPointer) throws {
        do { try descriptor.writeFully(at: byteOffset, from: data) } catch {
            throw StoreError.io(path: path, operation: "write", byteOffset: byteOffset, error)
        }
    }

    /// Punches a hole (reads as zeros, frees the space); where that is unsupported, writes zeros.
    func writeZeroes(at byteOffset: UInt64, byteCount zeroByteCount: UInt64) throws {
        if canPunch {
            do {
                try descriptor.punchHole(at: byteOffset, byteCount: zeroByteCount)
                return
            } catch {
                canPunch = false
            }
        }
        let pieceByteCount = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(
            byteCount: pieceByteCount, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var cursor = byteOffset
        let end = byteOffset + zeroByteCount
        while cursor < end {
            let count = Int(min(UInt64(pieceByteCount), end - cursor))
            try write(at: cursor, from: UnsafeRawBufferPointer(rebasing: zeros[..<count]))
            cursor += UInt64(count)
        }
    }

    func sync() throws {
        do { try descriptor.synchronizeAll() } catch {
            throw StoreError.io(path: path, operation: "fsync", byteOffset: 0, error)
        }
    }

    func finish() throws { try sync() }
}
