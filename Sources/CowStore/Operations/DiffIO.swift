// Byte streams for diffs: a buffered writer to any descriptor (a pipe or a file) and a
// positional reader of a seekable diff file. Both feed a whole-stream checksum; neither knows
// the record layout.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Buffered sequential output (stdout, a pipe, a file), hashing every byte it writes.
final class DiffOutput {
    static let bufferByteCount = 1 << 20
    let descriptor: FileDescriptor
    /// Where the bytes go instead of `descriptor`, if set.
    let sink: ((UnsafeRawBufferPointer) throws -> Void)?
    let name: String
    let checksum = DiffChecksum()
    private(set) var writtenByteCount: UInt64 = 0
    private let buffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: bufferByteCount, alignment: 4096)
    private var filled = 0

    init(descriptor: FileDescriptor, name: String) {
        self.descriptor = descriptor
        self.name = name
        sink = nil
    }

    init(name: String, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        descriptor = FileDescriptor(rawValue: -1)
        self.name = name
        self.sink = sink
    }

    deinit { buffer.deallocate() }

    /// Appends `bytes` to the stream.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        checksum.update(bytes)
        writtenByteCount += UInt64(bytes.count)
        var done = 0
        while done < bytes.count {
            if filled == buffer.count { try drain() }
            let count = min(buffer.count - filled, bytes.count - done)
            UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + count)]).copyMemory(
                from: UnsafeRawBufferPointer(rebasing: bytes[done..<(done + count)]))
            filled += count
            done += count
        }
    }

    func append(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try append($0) } }

    /// Appends a little-endian integer.
    func append<T: FixedWidthInteger>(littleEndian value: T) throws {
        try withUnsafeBytes(of: value.littleEndian) { try append($0) }
    }

    /// Writes out what is buffered. The corresponding C function is `write`.
    func drain() throws {
        if let sink {
            try sink(UnsafeRawBufferPointer(rebasing: buffer[..<filled]))
            filled = 0
            return
        }
        var done = 0
        while done < filled {
            let result = Glibc.write(descriptor.rawValue, buffer.baseAddress! + done, filled - done)
            if result > 0 {
                done += result
            } else if result < 0 && Glibc.errno == EINTR {
                continue
            } else {
                throw StoreError.io(
                    path: FilePath(name), operation: "write", byteOffset: writtenByteCount,
                    Errno(rawValue: result < 0 ? Glibc.errno : EIO))
            }
        }
        filled = 0
    }
}

/// Reads of a diff file from its start, hashing what it reads, through 1 MiB blocks. The first
/// pass (the verifying one) records each block's XXH3-64; a later pass checks every block it
/// loads against that digest before it hands out a byte of it, so a file changed between the
/// passes can never feed the applying pass bytes that were not verified. A read past the end
/// throws `truncated`: a diff never ends early on purpose.
final class DiffInput {
    static let blockByteCount = 1 << 20
    let descriptor: FileDescriptor
    let path: FilePath
    let byteCount: UInt64
    let checksum = DiffChecksum()
    private(set) var cursor: UInt64 = 0
    /// XXH3-64 of each block, in order, from the first pass.
    private var blockDigests: [UInt64] = []
    /// True during the first pass: blocks are recorded, not checked.
    private var isFirstPass = true
    private let block = UnsafeMutableRawBufferPointer.allocate(
        byteCount: blockByteCount, alignment: 4096)
    private var loadedBlock: (index: UInt64, byteCount: Int)?
    private let blockChecksum = DiffChecksum()

    init(descriptor: FileDescriptor, path: FilePath) throws {
        self.descriptor = descriptor
        self.path = path
        do { byteCount = try descriptor.byteCount() } catch {
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
    }

    deinit { block.deallocate() }

    var isAtEnd: Bool { cursor == byteCount }

    /// Starts again from the first byte with a fresh checksum; from now on every block is
    /// checked against the digest the first pass recorded.
    func rewind() {
        cursor = 0
        checksum.reset()
        isFirstPass = false
        loadedBlock = nil
    }

    /// The diff's identity once the first pass has read it all: XXH3-64 of the block digests.
    var digest: UInt64 {
        let digests = DiffChecksum()
        for value in blockDigests {
            withUnsafeBytes(of: value.littleEndian) { digests.update($0) }
        }
        return digests.digest
    }

    /// Fills `buffer` with the next `buffer.count` bytes.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        guard UInt64(buffer.count) <= byteCount - cursor else {
            throw StoreError.format(
                path: path,
                .truncated(
                    expectedByteCount: Int(cursor) + buffer.count, actualByteCount: Int(byteCount)))
        }
        let blockByteCount = UInt64(Self.blockByteCount)
        var done = 0
        while done < buffer.count {
            let loaded = try load(blockIndex: cursor / blockByteCount)
            let offsetInBlock = Int(cursor % blockByteCount)
            let count = min(loaded - offsetInBlock, buffer.count - done)
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)]).copyMemory(
                from: UnsafeRawBufferPointer(
                    rebasing: block[offsetInBlock..<(offsetInBlock + count)]))
            done += count
            cursor += UInt64(count)
        }
        checksum.update(UnsafeRawBufferPointer(buffer))
    }

    /// Reads block `blockIndex` into `block` unless it is there; returns its byte count.
    private func load(blockIndex: UInt64) throws -> Int {
        if let loadedBlock, loadedBlock.index == blockIndex { return loadedBlock.byteCount }
        let blockByteOffset = blockIndex * UInt64(Self.blockByteCount)
        let count = Int(min(UInt64(Self.blockByteCount), byteCount - blockByteOffset))
        let piece = UnsafeMutableRawBufferPointer(rebasing: block[..<count])
        let done: Int
        do { done = try descriptor.readUpToFully(at: blockByteOffset, into: piece) } catch {
            throw StoreError.io(path: path, operation: "read", byteOffset: blockByteOffset, error)
        }
        guard done == count else {
            throw StoreError.shortRead(
                path: path, byteOffset: blockByteOffset, expectedByteCount: count,
                actualByteCount: done)
        }
        blockChecksum.reset()
        blockChecksum.update(UnsafeRawBufferPointer(piece))
        let blockDigest = blockChecksum.digest
        let index = Int(blockIndex)
        if index < blockDigests.count {
            guard blockDigests[index] == blockDigest else {
                loadedBlock = nil
                throw StoreError.invalidArgument(
                    "\(path): bytes \(blockByteOffset) to \(blockByteOffset + UInt64(count)) "
                        + "changed after the diff was verified; none of them was applied")
            }
        } else {
            // Reads move forward only, so the first pass loads each block once, in order.
            precondition(isFirstPass && index == blockDigests.count, "diff blocks read in order")
            blockDigests.append(blockDigest)
        }
        loadedBlock = (blockIndex, count)
        return count
    }

    /// The next little-endian integer.
    func read<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        var value = T.zero
        try withUnsafeMutableBytes(of: &value) { try read(into: $0) }
        return T(littleEndian: value)
    }
}
