// A store file as a power cut could leave it, in memory: the bytes of its allocated 4 KiB pages
// (the rest are holes) and its size, and the pieces (torn sectors) a recorded change splits into.
// Knows nothing of the store's format; CrashStateExplorer.swift decides which pieces survive.

import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One part of a recorded change that a disk may persist or drop on its own: a sector of a
/// write, a page of a punched or zeroed range, or a size change.
enum CrashPiece: Sendable {
    case write(byteOffset: UInt64, bytes: ArraySlice<UInt8>)
    case punchHole(byteOffset: UInt64, byteCount: UInt64)
    case zeroRange(byteOffset: UInt64, byteCount: UInt64)
    case setByteCount(UInt64)

    /// Splits `event` at sector boundaries: `sectorByteCount(offset)` gives the sector size
    /// that holds file byte `offset` (4 KiB, or 512 where a page may tear). Syncs give nothing.
    static func pieces(
        of event: StoreIOEvent, sectorByteCount: (UInt64) -> UInt64
    ) -> [CrashPiece] {
        func split(_ start: UInt64, _ count: UInt64) -> [Range<UInt64>] {
            var ranges: [Range<UInt64>] = []
            var cursor = start
            let end = start + count
            while cursor < end {
                let sector = sectorByteCount(cursor)
                let next = min(end, (cursor / sector + 1) * sector)
                ranges.append(cursor..<next)
                cursor = next
            }
            return ranges
        }
        switch event {
        case .write(let byteOffset, let bytes):
            return split(byteOffset, UInt64(bytes.count)).map {
                .write(
                    byteOffset: $0.lowerBound,
                    bytes: bytes[
                        Int($0.lowerBound - byteOffset)..<Int($0.upperBound - byteOffset)])
            }
        case .punchHole(let byteOffset, let byteCount):
            return split(byteOffset, byteCount).map {
                .punchHole(byteOffset: $0.lowerBound, byteCount: UInt64($0.count))
            }
        case .zeroRange(let byteOffset, let byteCount):
            return split(byteOffset, byteCount).map {
                .zeroRange(byteOffset: $0.lowerBound, byteCount: UInt64($0.count))
            }
        case .setByteCount(let byteCount):
            return [.setByteCount(byteCount)]
        case .synchronizeData, .synchronizeAll:
            return []
        }
    }
}

/// A sparse file in memory: allocated pages by index, holes elsewhere.
struct FileImage {
    static let pageByteCount: UInt64 = 4096

    var byteCount: UInt64
    var pages: [UInt64: [UInt8]] = [:]

    /// Reads the file at `path`, keeping its holes (SEEK_DATA/SEEK_HOLE).
    init(readingFileAt path: String) throws {
        let descriptor = try FileDescriptor.open(FilePath(path), .readOnly)
        defer { try? descriptor.close() }
        byteCount = UInt64(lseek(descriptor.rawValue, 0, SEEK_END))
        // Linux's SEEK_DATA and SEEK_HOLE (Glibc hides them without _GNU_SOURCE).
        let seekData: Int32 = 3
        let seekHole: Int32 = 4
        var cursor = 0
        while UInt64(cursor) < byteCount {
            let dataStart = lseek(descriptor.rawValue, cursor, seekData)
            guard dataStart >= 0 else { break }  // ENXIO: only holes follow
            let holeStart = lseek(descriptor.rawValue, dataStart, seekHole)
            let firstPage = UInt64(dataStart) / Self.pageByteCount
            let endPage = (UInt64(holeStart) + Self.pageByteCount - 1) / Self.pageByteCount
            for pageIndex in firstPage..<endPage {
                var page = [UInt8](repeating: 0, count: Int(Self.pageByteCount))
                _ = try page.withUnsafeMutableBytes {
                    try descriptor.read(
                        fromAbsoluteOffset: Int64(pageIndex * Self.pageByteCount), into: $0)
                }
                pages[pageIndex] = page
            }
            cursor = Int(endPage * Self.pageByteCount)
        }
    }

    mutating func apply(_ piece: CrashPiece) {
        switch piece {
        case .write(let byteOffset, let bytes):
            var cursor = byteOffset
            var source = bytes.startIndex
            while source < bytes.endIndex {
                let pageIndex = cursor / Self.pageByteCount
                let inPage = Int(cursor % Self.pageByteCount)
                let count = min(bytes.endIndex - source, Int(Self.pageByteCount) - inPage)
                var page = pages[pageIndex] ?? [UInt8](repeating: 0, count: Int(Self.pageByteCount))
                page.replaceSubrange(
                    inPage..<(inPage + count), with: bytes[source..<(source + count)])
                pages[pageIndex] = page
                cursor += UInt64(count)
                source += count
            }
            byteCount = max(byteCount, cursor)
        case .punchHole(let byteOffset, let count):
            zero(
                byteOffset, min(count, byteCount > byteOffset ? byteCount - byteOffset : 0),
                keep: false)
        case .zeroRange(let byteOffset, let count):
            zero(
                byteOffset, min(count, byteCount > byteOffset ? byteCount - byteOffset : 0),
                keep: true)
        case .setByteCount(let newByteCount):
            if newByteCount < byteCount {
                let firstGone = (newByteCount + Self.pageByteCount - 1) / Self.pageByteCount
                for pageIndex in pages.keys where pageIndex >= firstGone { pages[pageIndex] = nil }
                if newByteCount % Self.pageByteCount != 0 {
                    zero(
                        newByteCount, Self.pageByteCount - newByteCount % Self.pageByteCount,
                        keep: false)
                }
            }
            byteCount = newByteCount
        }
    }

    /// Zeroes a range; whole pages become holes unless `keep` (ZERO_RANGE keeps them allocated).
    private mutating func zero(_ byteOffset: UInt64, _ count: UInt64, keep: Bool) {
        var cursor = byteOffset
        let end = byteOffset + count
        while cursor < end {
            let pageIndex = cursor / Self.pageByteCount
            let inPage = Int(cursor % Self.pageByteCount)
            let pieceCount = Int(min(end - cursor, Self.pageByteCount - UInt64(inPage)))
            if pieceCount == Int(Self.pageByteCount) && !keep {
                pages[pageIndex] = nil
            } else if var page = pages[pageIndex] {
                page.replaceSubrange(
                    inPage..<(inPage + pieceCount), with: repeatElement(0, count: pieceCount))
                pages[pageIndex] = page
            } else if keep {
                pages[pageIndex] = [UInt8](repeating: 0, count: Int(Self.pageByteCount))
            }
            cursor += UInt64(pieceCount)
        }
    }

    /// The bytes at `byteOffset` (holes and the part past the end read as zeros).
    func bytes(at byteOffset: UInt64, count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var cursor = byteOffset
        while cursor < byteOffset + UInt64(count) {
            let pageIndex = cursor / Self.pageByteCount
            let inPage = Int(cursor % Self.pageByteCount)
            let pieceCount = min(
                Int(byteOffset) + count - Int(cursor), Int(Self.pageByteCount) - inPage)
            if let page = pages[pageIndex], cursor < byteCount {
                let start = Int(cursor - byteOffset)
                result.replaceSubrange(
                    start..<(start + pieceCount), with: page[inPage..<(inPage + pieceCount)])
            }
            cursor += UInt64(pieceCount)
        }
        return result
    }

    /// Replaces the file at `path` with this image: same size, same holes, same bytes.
    func write(to path: String) throws {
        let descriptor = try FileDescriptor.open(
            FilePath(path), .writeOnly, options: [.create, .truncate],
            permissions: [.ownerReadWrite])
        defer { try? descriptor.close() }
        guard ftruncate(descriptor.rawValue, off_t(byteCount)) == 0 else {
            throw Errno(rawValue: errno)
        }
        for (pageIndex, page) in pages {
            let pageStart = pageIndex * Self.pageByteCount
            guard pageStart < byteCount else { continue }
            let count = Int(min(Self.pageByteCount, byteCount - pageStart))
            let written = try page.withUnsafeBytes {
                try descriptor.write(
                    toAbsoluteOffset: Int64(pageStart),
                    UnsafeRawBufferPointer(rebasing: $0[..<count]))
            }
            precondition(written == count, "short write of a crash image")
        }
    }
}
