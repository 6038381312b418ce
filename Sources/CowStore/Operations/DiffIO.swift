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
    let name: String
    let checksum = DiffChecksum()
    private(set) var writtenByteCount: UInt64 = 0
    private let buffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: bufferByteCount, alignment: 4096)
    private var filled = 0

    init(descriptor: FileDescriptor, name: String) {
        self.descriptor = descriptor
        self.name = name
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

/// Positional reads of a diff file from its start, hashing what it reads. A read past the end
/// throws `truncated`: a diff never ends early on purpose.
final class DiffInput {
    let descriptor: FileDescriptor
    let path: FilePath
    let byteCount: UInt64
    let checksum = DiffChecksum()
    private(set) var cursor: UInt64 = 0

    init(descriptor: FileDescriptor, path: FilePath) throws {
        self.descriptor = descriptor
        self.path = path
        do { byteCount = try descriptor.byteCount() } catch {
            throw StoreError.io(path: path, operation: "fstat", byteOffset: 0, error)
        }
    }

    var isAtEnd: Bool { cursor == byteCount }

    /// Starts again from the first byte with a fresh checksum.
    func rewind() {
        cursor = 0
        checksum.reset()
    }

    /// Fills `buffer` with the next `buffer.count` bytes.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        guard UInt64(buffer.count) <= byteCount - cursor else {
            throw StoreError.format(
                path: path,
                .truncated(
                    expectedByteCount: Int(cursor) + buffer.count, actualByteCount: Int(byteCount)))
        }
        let done: Int
        do { done = try descriptor.readUpToFully(at: cursor, into: buffer) } catch {
            throw StoreError.io(path: path, operation: "read", byteOffset: cursor, error)
        }
        guard done == buffer.count else {
            throw StoreError.shortRead(
                path: path, byteOffset: cursor, expectedByteCount: buffer.count,
                actualByteCount: done)
        }
        checksum.update(UnsafeRawBufferPointer(buffer))
        cursor += UInt64(buffer.count)
    }

    /// The next little-endian integer.
    func read<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        var value = T.zero
        try withUnsafeMutableBytes(of: &value) { try read(into: $0) }
        return T(littleEndian: value)
    }
}
