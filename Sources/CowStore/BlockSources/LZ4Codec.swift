// liblz4's block functions, thinly wrapped: compress one block (fast or HC), alone or against
// the image's shared dictionary, into a buffer that must come out smaller than the input, and
// decompress one block, in place or not.

import CLZ4

/// How hard `compress` works: LZ4's fast compressor, or LZ4 HC (slower, smaller).
public enum CompressionLevel: String, Sendable, CaseIterable {
    case fast
    case high

    /// The LZ4 HC level `high` uses. On 16 KiB blocks against the shared dictionary, level 4
    /// (8 match attempts a position) makes the bench base 0.4% larger than level 9 (256
    /// attempts) for about 35% less CPU, which keeps `high` cheaper than a zlib qcow2
    /// (docs/FORMAT.md, "Compressed block size").
    public static let highLevel: Int32 = 4

    /// The number the image header records: 0 for fast, else the HC level.
    public var recordedLevel: UInt32 { self == .fast ? 0 : UInt32(Self.highLevel) }
}

/// One block in, one block out. Each compressing thread owns one, for its state buffers.
/// Not thread-safe: the state is scratch memory for the thread that owns it.
final class LZ4Compressor {
    let level: CompressionLevel
    private let state: UnsafeMutableRawBufferPointer
    /// With a dictionary: the stream state after loading it, copied over `state` before each
    /// block so that every block starts from the dictionary alone (none of the previous block).
    private let dictionaryState: UnsafeMutableRawBufferPointer?
    /// With a dictionary: a copy of it followed by room for one block. Each block is copied
    /// right after the dictionary, so LZ4 sees the dictionary as the block's prefix and
    /// searches one contiguous window instead of two (its faster path; the same format).
    private let window: UnsafeMutableRawBufferPointer?
    private let dictionaryByteCount: Int

    /// A compressor of blocks of at most `maxBlockByteCount` bytes, against `dictionary` if
    /// it is not empty (copied: the caller's bytes may go). The corresponding C functions are
    /// `LZ4_loadDict` and `LZ4_loadDictHC` (after `LZ4_resetStreamHC_fast`, which sets the HC
    /// level).
    init(
        level: CompressionLevel, maxBlockByteCount: Int,
        dictionary: UnsafeRawBufferPointer = .init(start: nil, count: 0)
    ) {
        self.level = level
        dictionaryByteCount = dictionary.count
        let stateByteCount =
            level == .fast ? MemoryLayout<LZ4_stream_t>.size : MemoryLayout<LZ4_streamHC_t>.size
        state = .allocate(byteCount: stateByteCount, alignment: 16)
        guard dictionary.count > 0 else {
            dictionaryState = nil
            window = nil
            return
        }
        let window = UnsafeMutableRawBufferPointer.allocate(
            byteCount: dictionary.count + maxBlockByteCount, alignment: 16)
        UnsafeMutableRawBufferPointer(rebasing: window[..<dictionary.count])
            .copyMemory(from: dictionary)
        let loaded = UnsafeMutableRawBufferPointer.allocate(
            byteCount: stateByteCount, alignment: 16)
        let dictionaryBytes = window.baseAddress?.assumingMemoryBound(to: CChar.self)
        switch level {
        case .fast:
            let stream = LZ4_initStream(loaded.baseAddress, stateByteCount)
            _ = LZ4_loadDict(stream, dictionaryBytes, Int32(dictionary.count))
        case .high:
            let stream = LZ4_initStreamHC(loaded.baseAddress, stateByteCount)
            LZ4_resetStreamHC_fast(stream, CompressionLevel.highLevel)
            _ = LZ4_loadDictHC(stream, dictionaryBytes, Int32(dictionary.count))
        }
        self.window = window
        dictionaryState = loaded
    }

    deinit {
        state.deallocate()
        dictionaryState?.deallocate()
        window?.deallocate()
    }

    /// Compresses `source` into `destination`; returns the compressed size, or nil if the
    /// result would not fit (give `destination` one byte less than `source` to learn "does not
    /// compress": the block is then stored raw). The corresponding C functions are
    /// `LZ4_compress_fast_extState` and `LZ4_compress_HC_extStateHC`; with a dictionary,
    /// `LZ4_compress_fast_continue` and `LZ4_compress_HC_continue` from its loaded state, on
    /// the block copied to just after the dictionary.
    func compress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer)
        -> Int?
    {
        let destinationBytes = destination.baseAddress?.assumingMemoryBound(to: CChar.self)
        if let dictionaryState, let window {
            precondition(source.count <= window.count - dictionaryByteCount, "block too large")
            let block = UnsafeMutableRawBufferPointer(
                rebasing: window[dictionaryByteCount..<(dictionaryByteCount + source.count)])
            block.copyMemory(from: source)
            let blockBytes = block.baseAddress?.assumingMemoryBound(to: CChar.self)
            state.copyMemory(from: UnsafeRawBufferPointer(dictionaryState))
            let result: Int32
            switch level {
            case .fast:
                result = LZ4_compress_fast_continue(
                    state.baseAddress?.assumingMemoryBound(to: LZ4_stream_t.self), blockBytes,
                    destinationBytes, Int32(source.count), Int32(destination.count), 1)
            case .high:
                result = LZ4_compress_HC_continue(
                    state.baseAddress?.assumingMemoryBound(to: LZ4_streamHC_t.self), blockBytes,
                    destinationBytes, Int32(source.count), Int32(destination.count))
            }
            return result > 0 ? Int(result) : nil
        }
        let sourceBytes = source.baseAddress?.assumingMemoryBound(to: CChar.self)
        let result: Int32
        switch level {
        case .fast:
            result = LZ4_compress_fast_extState(
                state.baseAddress, sourceBytes, destinationBytes, Int32(source.count),
                Int32(destination.count), 1)
        case .high:
            result = LZ4_compress_HC_extStateHC(
                state.baseAddress, sourceBytes, destinationBytes, Int32(source.count),
                Int32(destination.count), CompressionLevel.highLevel)
        }
        return result > 0 ? Int(result) : nil
    }
}

/// Decompression of single LZ4 blocks.
enum LZ4Decompressor {
    /// Extra bytes past the decompressed size that a buffer needs for in-place decompression
    /// (the compressed bytes at its end, the output from its start).
    /// The corresponding C macro is `LZ4_DECOMPRESS_INPLACE_MARGIN`.
    static func inPlaceMargin(decompressedByteCount: Int) -> Int {
        (decompressedByteCount >> 8) + 32
    }

    /// Decompresses `compressedByteCount` bytes that end `buffer` into its first
    /// `decompressedByteCount` bytes, or with `prefixByteCount` only that many first bytes (a
    /// read near the start of a block decompresses only what it needs). Returns false unless
    /// exactly that many came out (damaged input never writes outside `buffer`). The
    /// corresponding C functions are `LZ4_decompress_safe` and `LZ4_decompress_safe_partial`
    /// (whose source size here is the block's exact size), used in place as lz4.h's "In-place
    /// compression and decompression" describes; with a non-empty `dictionary`,
    /// `LZ4_decompress_safe_usingDict` and `LZ4_decompress_safe_partial_usingDict` (a match
    /// copied from the dictionary still takes input bytes, so the in-place margin holds).
    static func decompressInPlace(
        _ buffer: UnsafeMutableRawBufferPointer, compressedByteCount: Int,
        decompressedByteCount: Int, prefixByteCount: Int? = nil,
        dictionary: UnsafeRawBufferPointer = .init(start: nil, count: 0)
    ) -> Bool {
        let targetByteCount = prefixByteCount ?? decompressedByteCount
        precondition(compressedByteCount < decompressedByteCount)
        precondition(targetByteCount > 0 && targetByteCount <= decompressedByteCount)
        precondition(
            buffer.count
                >= decompressedByteCount
                + inPlaceMargin(decompressedByteCount: decompressedByteCount))
        guard let start = buffer.baseAddress else { return false }
        let source = (start + (buffer.count - compressedByteCount)).assumingMemoryBound(
            to: CChar.self)
        let destination = start.assumingMemoryBound(to: CChar.self)
        if let dictionaryStart = dictionary.baseAddress, dictionary.count > 0 {
            let dictionaryBytes = dictionaryStart.assumingMemoryBound(to: CChar.self)
            let dictionaryByteCount = Int32(dictionary.count)
            let result =
                targetByteCount == decompressedByteCount
                ? LZ4_decompress_safe_usingDict(
                    source, destination, Int32(compressedByteCount), Int32(decompressedByteCount),
                    dictionaryBytes, dictionaryByteCount)
                : LZ4_decompress_safe_partial_usingDict(
                    source, destination, Int32(compressedByteCount), Int32(targetByteCount),
                    Int32(decompressedByteCount), dictionaryBytes, dictionaryByteCount)
            return result == Int32(targetByteCount)
        }
        let result =
            targetByteCount == decompressedByteCount
            ? LZ4_decompress_safe(
                source, destination, Int32(compressedByteCount), Int32(decompressedByteCount))
            : LZ4_decompress_safe_partial(
                source, destination, Int32(compressedByteCount), Int32(targetByteCount),
                Int32(decompressedByteCount))
        return result == Int32(targetByteCount)
    }

    /// Decompresses all of `source` into `destination`, against `dictionary` if it is not
    /// empty; returns false unless it fills `destination` exactly (damaged input never writes
    /// outside it). The corresponding C functions are `LZ4_decompress_safe` and
    /// `LZ4_decompress_safe_usingDict`.
    static func decompress(
        _ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer,
        dictionary: UnsafeRawBufferPointer = .init(start: nil, count: 0)
    ) -> Bool {
        let sourceBytes = source.baseAddress?.assumingMemoryBound(to: CChar.self)
        let destinationBytes = destination.baseAddress?.assumingMemoryBound(to: CChar.self)
        if let dictionaryStart = dictionary.baseAddress, dictionary.count > 0 {
            let result = LZ4_decompress_safe_usingDict(
                sourceBytes, destinationBytes, Int32(source.count), Int32(destination.count),
                dictionaryStart.assumingMemoryBound(to: CChar.self), Int32(dictionary.count))
            return result == Int32(destination.count)
        }
        let result = LZ4_decompress_safe(
            sourceBytes, destinationBytes, Int32(source.count), Int32(destination.count))
        return result == Int32(destination.count)
    }
}
