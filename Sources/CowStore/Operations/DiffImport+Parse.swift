// Reading diff streams record by record, for both passes of an import: the verifying pass
// (`applying` false) checks every checksum, range and count; the applying pass writes.

import CowFormat
import SystemPackage

extension DiffImport {
    private func bad(_ error: FormatError) -> StoreError { .format(path: input.path, error) }

    /// A data or zero extent must lie inside the disk and not be empty.
    private func checkRange(_ byteOffset: UInt64, _ byteCount: UInt64, diskByteCount: UInt64)
        throws
    {
        guard byteCount > 0, byteOffset <= diskByteCount, byteCount <= diskByteCount - byteOffset
        else {
            throw bad(.invalidField(name: "extent at \(byteOffset) of length", value: byteCount))
        }
    }

    /// Reads `byteCount` bytes of extent data in pieces, hashing them into `checksum` and, when
    /// applying, writing them at `byteOffset`.
    private func copyData(
        at byteOffset: UInt64, byteCount: UInt64, checksum: DiffChecksum?, applying: Bool
    ) throws {
        var done: UInt64 = 0
        while done < byteCount {
            let count = Int(min(UInt64(Self.pieceByteCount), byteCount - done))
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            try input.read(into: piece)
            checksum?.update(UnsafeRawBufferPointer(piece))
            if applying {
                try target.write(at: byteOffset + done, from: UnsafeRawBufferPointer(piece))
            }
            done += UInt64(count)
        }
    }

    /// Skips `byteCount` bytes (snapshot names, unknown v2 records).
    private func skip(_ byteCount: UInt64) throws {
        var done: UInt64 = 0
        while done < byteCount {
            let count = Int(min(UInt64(Self.pieceByteCount), byteCount - done))
            try input.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<count]))
            done += UInt64(count)
        }
    }

    func parseNative(magic: [UInt8], applying: Bool, progress: (UInt64, UInt64) -> Void) throws
        -> Summary
    {
        var headerBytes = magic + [UInt8](repeating: 0, count: DiffHeader.byteCount - magic.count)
        try headerBytes.withUnsafeMutableBytes {
            try input.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[magic.count...]))
        }
        let header: DiffHeader
        do {
            header = try headerBytes.withUnsafeBytes { bytes throws(FormatError) in
                try DiffHeader(parsing: bytes)
            }
        } catch let error as FormatError { throw bad(error) }
        if !applying { verifiedNativeHeader = header }
        var summary = Summary(kind: .native, virtualByteCount: header.virtualByteCount)
        let recordChecksum = DiffChecksum()
        var recordBytes = [UInt8](repeating: 0, count: DiffRecord.byteCount)
        while true {
            try recordBytes.withUnsafeMutableBytes {
                try input.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<24]))
            }
            // The trailer's checksum covers the stream up to here: take it before reading on.
            let streamDigest = input.checksum.digest
            try recordBytes.withUnsafeMutableBytes {
                try input.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[24...]))
            }
            let record: DiffRecord
            do {
                record = try recordBytes.withUnsafeBytes { bytes throws(FormatError) in
                    try DiffRecord(parsing: bytes)
                }
            } catch let error as FormatError { throw bad(error) }
            if record.kind == .end {
                try checkTrailer(record, streamDigest: streamDigest, summary: summary)
                return summary
            }
            try checkRange(record.first, record.second, diskByteCount: header.virtualByteCount)
            recordChecksum.reset()
            recordBytes.withUnsafeBytes {
                recordChecksum.update(UnsafeRawBufferPointer(rebasing: $0[..<24]))
            }
            if record.kind == .data {
                try copyData(
                    at: record.first, byteCount: record.second, checksum: recordChecksum,
                    applying: applying)
                summary.dataByteCount += record.second
            } else {
                summary.zeroByteCount += record.second
            }
            guard recordChecksum.digest == record.checksum else {
                throw bad(
                    .checksumMismatch(stored: record.checksum, computed: recordChecksum.digest))
            }
            if applying && record.kind == .zero {
                try target.writeZeroes(at: record.first, byteCount: record.second)
            }
            summary.extentCount += 1
            if applying {
                progress(summary.dataByteCount, 0)
                try afterRecordApplied?(summary.extentCount)
            }
        }
    }

    private func checkTrailer(_ record: DiffRecord, streamDigest: UInt64, summary: Summary) throws {
        guard record.checksum == streamDigest else {
            throw bad(.checksumMismatch(stored: record.checksum, computed: streamDigest))
        }
        guard record.first == summary.extentCount else {
            throw bad(.invalidField(name: "trailer extent count", value: record.first))
        }
        guard record.second == summary.dataByteCount else {
            throw bad(.invalidField(name: "trailer data byte count", value: record.second))
        }
        guard input.isAtEnd else {
            throw bad(
                .invalidField(
                    name: "bytes after the trailer", value: input.byteCount - input.cursor))
        }
    }

    /// rbd diff v1 and v2 (interop-formats.md). v2 records carry a payload length, so unknown
    /// ones are skipped; in v1 an unknown tag ends the parse with an error.
    func parseRBD(version2: Bool, applying: Bool, progress: (UInt64, UInt64) -> Void) throws
        -> Summary
    {
        var summary = Summary(kind: version2 ? .rbdV2 : .rbdV1)
        var size: UInt64?
        while true {
            let tag = try input.read(UInt8.self)
            if tag == RBDDiff.end {
                guard input.isAtEnd else {
                    throw bad(
                        .invalidField(
                            name: "bytes after the end record",
                            value: input.byteCount - input.cursor))
                }
                guard let size else {
                    throw bad(.invalidField(name: "missing size record", value: 0))
                }
                summary.virtualByteCount = size
                return summary
            }
            let payloadByteCount = version2 ? try input.read(UInt64.self) : nil
            switch tag {
            case RBDDiff.fromSnapshot, RBDDiff.toSnapshot:
                let nameByteCount = UInt64(try input.read(UInt32.self))
                guard nameByteCount <= RBDDiff.maxNameByteCount,
                    payloadByteCount == nil || payloadByteCount == 4 + nameByteCount
                else {
                    throw bad(.invalidField(name: "snapshot name length", value: nameByteCount))
                }
                try skip(nameByteCount)
            case RBDDiff.size:
                guard payloadByteCount == nil || payloadByteCount == 8, size == nil else {
                    throw bad(.invalidField(name: "size record", value: payloadByteCount ?? 0))
                }
                size = try input.read(UInt64.self)
            case RBDDiff.write, RBDDiff.zero:
                guard let size else {
                    throw bad(.invalidField(name: "extent before the size record", value: 0))
                }
                let byteOffset = try input.read(UInt64.self)
                let byteCount = try input.read(UInt64.self)
                let isWrite = tag == RBDDiff.write
                // Compared as payload - 16, not 16 + extent: an extent near 2^64 bytes would
                // overflow the sum (its range is refused just below).
                guard
                    payloadByteCount.map({ $0 >= 16 && $0 - 16 == (isWrite ? byteCount : 0) })
                        ?? true
                else {
                    throw bad(.invalidField(name: "record length", value: payloadByteCount ?? 0))
                }
                try checkRange(byteOffset, byteCount, diskByteCount: size)
                if isWrite {
                    try copyData(
                        at: byteOffset, byteCount: byteCount, checksum: nil, applying: applying)
                    summary.dataByteCount += byteCount
                } else {
                    if applying { try target.writeZeroes(at: byteOffset, byteCount: byteCount) }
                    summary.zeroByteCount += byteCount
                }
                summary.extentCount += 1
                if applying {
                    progress(summary.dataByteCount, 0)
                    try afterRecordApplied?(summary.extentCount)
                }
            default:
                guard let payloadByteCount else {
                    throw bad(.invalidField(name: "rbd diff v1 record tag", value: UInt64(tag)))
                }
                try skip(payloadByteCount)
            }
        }
    }
}
