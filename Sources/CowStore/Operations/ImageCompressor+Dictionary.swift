// The shared dictionary of a compressed image (docs/FORMAT.md, "Shared dictionary"): zstd's
// trainer picks the content that recurs most in evenly spaced pieces of the source; every LZ4
// block is then compressed against it. Reading and compressing the blocks are elsewhere.

import CZstd
import CowFormat

extension ImageCompressor {
    /// Bytes in one sample piece: a filesystem block, the unit content repeats in.
    static let samplePieceByteCount = 4096
    /// Most sample pieces read (4 MiB): the trainer's time grows with its input, and more
    /// samples gave a dictionary under 1% better on the bench base for 15 times the time.
    static let maxSamplePieceCount = 1024

    /// A dictionary of at most `LZ4ImageHeader.maxDictionaryByteCount` bytes for `source`, or
    /// an empty one when the source has too little non-zero data to train on (the image is
    /// then written without a dictionary). Deterministic: the same source gives the same bytes.
    /// The corresponding C functions are `ZDICT_trainFromBuffer` and `ZDICT_getDictHeaderSize`
    /// (only the content after the zstd dictionary's header is kept: LZ4 uses raw history).
    static func trainDictionary(for source: any BlockSource) throws -> [UInt8] {
        let (samples, sampleByteCounts) = try samplePieces(of: source)
        guard sampleByteCounts.count >= 8 else { return [] }
        let capacity = Int(LZ4ImageHeader.maxDictionaryByteCount)
        var trained = [UInt8](repeating: 0, count: capacity)
        let trainedByteCount = trained.withUnsafeMutableBytes { dictionary in
            samples.withUnsafeBytes { sampleBytes in
                ZDICT_trainFromBuffer(
                    dictionary.baseAddress, capacity, sampleBytes.baseAddress, sampleByteCounts,
                    UInt32(sampleByteCounts.count))
            }
        }
        // Too few or too uniform samples: the trainer refuses, and blocks go alone.
        guard ZDICT_isError(trainedByteCount) == 0 else { return [] }
        let headerByteCount = trained.withUnsafeBytes {
            ZDICT_getDictHeaderSize($0.baseAddress, trainedByteCount)
        }
        guard ZDICT_isError(headerByteCount) == 0, headerByteCount < trainedByteCount else {
            return []
        }
        return Array(trained[headerByteCount..<trainedByteCount])
    }

    /// Up to `maxSamplePieceCount` pieces spread evenly over the source, all-zero ones and
    /// holes skipped, back to back, with each piece's size (the last may be short).
    private static func samplePieces(of source: any BlockSource) throws -> ([UInt8], [Int]) {
        let pieceByteCount = UInt64(samplePieceByteCount)
        let pieceCount = (source.byteCount + pieceByteCount - 1) / pieceByteCount
        let stride = max(1, pieceCount / UInt64(maxSamplePieceCount))
        var samples = [UInt8](
            repeating: 0,
            count: samplePieceByteCount * Int(min(pieceCount, UInt64(maxSamplePieceCount))))
        var sampleByteCounts: [Int] = []
        var filledByteCount = 0
        try samples.withUnsafeMutableBytes { buffer in
            var pieceIndex: UInt64 = 0
            while pieceIndex < pieceCount, filledByteCount + samplePieceByteCount <= buffer.count {
                let byteOffset = pieceIndex * pieceByteCount
                let byteCount = Int(min(pieceByteCount, source.byteCount - byteOffset))
                pieceIndex += stride
                if let extent = try? source.extent(at: byteOffset, maxByteCount: UInt64(byteCount)),
                    extent.isHole, extent.byteCount == UInt64(byteCount)
                {
                    continue
                }
                let piece = UnsafeMutableRawBufferPointer(
                    rebasing: buffer[filledByteCount..<(filledByteCount + byteCount)])
                try source.read(at: byteOffset, into: piece)
                guard !isAllZero(UnsafeRawBufferPointer(piece)) else { continue }
                sampleByteCounts.append(byteCount)
                filledByteCount += byteCount
            }
        }
        return (Array(samples[..<filledByteCount]), sampleByteCounts)
    }
}
