import CowFormat
import CowStore
import Foundation
import SystemPackage

/// Writes an image of `byteCount` bytes made of runs of zeros (written), text, random bytes and
/// small sparse holes, in seeded random order and lengths; returns its bytes.
func makeMixedImage(at path: String, byteCount: Int, seed: UInt64) throws -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: byteCount)
    var holes: [Range<Int>] = []
    var cursor = 0
    var lineNumber = 0
    while cursor < byteCount {
        let length = min(byteCount - cursor, 1024 + Int(generator.next() % 200_000))
        switch generator.next() % 4 {
        case 0:
            break  // written zeros
        case 1:
            var text: [UInt8] = []
            while text.count < length {
                lineNumber += 1
                text += Array("line \(lineNumber): the quick brown fox jumps over it\n".utf8)
            }
            bytes.replaceSubrange(cursor..<(cursor + length), with: text[..<length])
        case 2:
            for index in cursor..<(cursor + length) {
                bytes[index] = UInt8(truncatingIfNeeded: generator.next())
            }
        default:
            holes.append(cursor..<(cursor + min(length, 40_000)))  // a small sparse region
        }
        cursor += length
    }
    let descriptor = try FileDescriptor.open(
        FilePath(path), .writeOnly, options: [.create, .truncate],
        permissions: [.ownerReadWrite])
    defer { try? descriptor.close() }
    var written = 0
    for hole in holes + [byteCount..<byteCount] {
        if hole.lowerBound > written {
            _ = try bytes[written..<hole.lowerBound].withUnsafeBytes {
                try descriptor.writeAll(toAbsoluteOffset: Int64(written), $0)
            }
        }
        written = hole.upperBound
    }
    try descriptor.resize(to: Int64(byteCount))
    return bytes
}

/// Compresses the raw image at `source` into `destination`.
@discardableResult
func compressImage(
    _ source: String, to destination: String, blockByteCount: UInt64 = 65536,
    level: CompressionLevel = .fast, threadCount: Int = 3, replacesExisting: Bool = false,
    usesDictionary: Bool = true
) throws -> ImageCompressor.Summary {
    let image = try ImageCompressor.openSource(at: FilePath(source))
    return try ImageCompressor.compress(
        image, to: FilePath(destination),
        options: .init(
            geometry: try LZ4BlockGeometry(blockByteCount: blockByteCount), level: level,
            threadCount: threadCount, replacesExisting: replacesExisting,
            usesDictionary: usesDictionary))
}

/// Opens a compressed image with a cache of `cacheByteCount` bytes.
func openCompressed(_ path: String, cacheByteCount: Int = 1 << 20) throws -> CompressedBaseImage {
    try CompressedBaseImage(
        path: FilePath(path),
        options: .init(cacheByteCount: cacheByteCount, logger: BaseOpenOptions.quiet.logger))
}

extension BlockSource {
    func readBytes(at offset: UInt64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0xA5, count: count)
        try bytes.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return bytes
    }

    func cachedBytes(at offset: UInt64, count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0xA5, count: count)
        let isCached = bytes.withUnsafeMutableBytes { readIfReady(at: offset, into: $0) }
        return isCached ? bytes : nil
    }
}

/// Flips one bit of the byte at `offset` in the file at `path`.
func flipByte(in path: String, at offset: UInt64) throws {
    let descriptor = try FileDescriptor.open(FilePath(path), .readWrite)
    defer { try? descriptor.close() }
    var byte: [UInt8] = [0]
    _ = try byte.withUnsafeMutableBytes {
        try descriptor.read(fromAbsoluteOffset: Int64(offset), into: $0)
    }
    byte[0] ^= 0x20
    _ = try byte.withUnsafeBytes { try descriptor.writeAll(toAbsoluteOffset: Int64(offset), $0) }
}

/// A base that fails every read at or after `failingByteOffset`: a source that breaks midway.
final class FailingImage: BlockSource {
    let path = FilePath("/failing")
    let byteCount: UInt64
    let failingByteOffset: UInt64
    var kindName: String { "failing" }

    init(byteCount: UInt64, failingByteOffset: UInt64) {
        self.byteCount = byteCount
        self.failingByteOffset = failingByteOffset
    }

    func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard byteOffset + UInt64(buffer.count) <= failingByteOffset else {
            throw StoreError.io(path: path, operation: "read", byteOffset: byteOffset, .ioError)
        }
        for index in 0..<buffer.count { buffer[index] = UInt8(truncatingIfNeeded: index % 7) }
    }

    func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        false
    }

    func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        SourceExtent(byteCount: min(maxByteCount, byteCount - byteOffset), isHole: false)
    }

    func prefetch(at byteOffset: UInt64, byteCount: UInt64) {}
}
