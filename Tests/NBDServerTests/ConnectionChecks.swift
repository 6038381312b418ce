// Checks shared by the server tests: compare what the export reads with the model, walk
// BLOCK_STATUS extents, and capture the NBD error of a failing command.

import NBDClient
import Testing

/// `base:allocation` flag bits (spec: "base:allocation metadata context").
let stateHole: UInt32 = 1 << 0
let stateZero: UInt32 = 1 << 1

/// Reads `byteCount` bytes at `byteOffset` and records an issue naming the first byte that
/// differs from `model`.
func expectRead(
    _ connection: NBDConnection, matches model: DiskModel, at byteOffset: UInt64, byteCount: Int,
    _ context: String = "", sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let bytes = try connection.pread(at: byteOffset, byteCount: byteCount)
    let difference = firstDifference(
        bytes, model.read(at: byteOffset, byteCount: byteCount), base: byteOffset)
    #expect(
        difference == nil, "read of \(byteCount) bytes at \(byteOffset) \(context)",
        sourceLocation: sourceLocation)
}

/// Reads the whole export in 1 MiB requests and compares each with `model`.
func expectExport(
    _ connection: NBDConnection, matches model: DiskModel, _ context: String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let stepByteCount: UInt64 = 1 << 20
    var byteOffset: UInt64 = 0
    while byteOffset < model.byteCount {
        let byteCount = Int(min(stepByteCount, model.byteCount - byteOffset))
        try expectRead(
            connection, matches: model, at: byteOffset, byteCount: byteCount, context,
            sourceLocation: sourceLocation)
        byteOffset += UInt64(byteCount)
    }
}

/// One extent with the offset where it starts.
struct PlacedExtent: CustomStringConvertible {
    let byteOffset: UInt64
    let length: UInt64
    let flags: UInt32
    var byteRange: Range<UInt64> { byteOffset..<(byteOffset + length) }
    var description: String { "[\(byteOffset), +\(length)) flags \(flags)" }
}

/// The extents of `context` covering `range`, by repeated BLOCK_STATUS (a server may answer
/// with less than asked). Throws if an answer is empty or runs past the request.
func extents(
    _ connection: NBDConnection, context: String = "base:allocation", covering range: Range<UInt64>
) throws -> [PlacedExtent] {
    var placed: [PlacedExtent] = []
    var byteOffset = range.lowerBound
    // Bounded: a server that answers one byte at a time would otherwise loop for long.
    for _ in 0..<10_000 where byteOffset < range.upperBound {
        let reply = try connection.blockStatus(
            at: byteOffset, byteCount: range.upperBound - byteOffset)
        guard let answer = reply[context], !answer.isEmpty else {
            throw TestFailure(
                "BLOCK_STATUS at \(byteOffset) returned no \(context) extents: \(reply)")
        }
        for extent in answer {
            guard extent.length > 0 else {
                throw TestFailure("BLOCK_STATUS at \(byteOffset) returned a zero-length extent")
            }
            placed.append(
                PlacedExtent(byteOffset: byteOffset, length: extent.length, flags: extent.flags))
            byteOffset += extent.length
        }
    }
    guard byteOffset >= range.upperBound else {
        throw TestFailure("BLOCK_STATUS walk of \(range) stopped at \(byteOffset)")
    }
    return placed
}

/// The flags of every extent overlapping `range`.
func flags(of placed: [PlacedExtent], overlapping range: Range<UInt64>) -> Set<UInt32> {
    Set(placed.filter { $0.byteRange.overlaps(range) }.map(\.flags))
}

/// Runs `body`, requires it to throw an NBDClientError, and returns that error's errno
/// (nil when it did not throw).
func nbdErrno(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) -> Int32? {
    let error = #expect(throws: NBDClientError.self, sourceLocation: sourceLocation) { try body() }
    return error?.errno
}
