// Which bytes of a base image its fingerprint covers, and how they are hashed.
// Cheap by design: a fixed number of samples whatever the size, so a 1 TiB base opens fast.

import CXXHash

/// The sampling plan behind `BaseFingerprint` (docs/FORMAT.md, "Base fingerprint").
public enum BaseFingerprintPlan {
    /// Identifies this plan in the store header; a new plan gets a new number.
    public static let scheme: UInt32 = 1
    /// Bytes hashed at the start and at the end of the base (partition tables, superblocks,
    /// backup GPT: the places an image tool rewrites first).
    public static let edgeByteCount: UInt64 = 64 << 10
    /// Evenly spaced samples between the edges.
    public static let sampleCount: UInt64 = 64
    /// Bytes in one sample.
    public static let sampleByteCount: UInt64 = 4096
    /// A base up to this size is hashed whole.
    public static let wholeHashLimit: UInt64 = 1 << 20

    /// The byte ranges to read, in order, for a base of `baseByteCount` bytes.
    public static func ranges(baseByteCount: UInt64) -> [Range<UInt64>] {
        if baseByteCount <= wholeHashLimit { return [0..<baseByteCount] }
        var ranges: [Range<UInt64>] = [0..<edgeByteCount]
        let lastStart = baseByteCount - sampleByteCount
        for sampleIndex in 0..<sampleCount {
            let start = (lastStart / (sampleCount - 1) * sampleIndex) & ~(sampleByteCount - 1)
            ranges.append(start..<(start + sampleByteCount))
        }
        ranges.append((baseByteCount - edgeByteCount)..<baseByteCount)
        return ranges
    }

    /// Total bytes `ranges(baseByteCount:)` covers: the buffer size a reader needs.
    public static func sampledByteCount(baseByteCount: UInt64) -> UInt64 {
        ranges(baseByteCount: baseByteCount).reduce(0) { $0 + UInt64($1.count) }
    }

    /// XXH3-128 of the sampled bytes laid end to end, seeded with the base size.
    public static func fingerprint(sampledBytes: UnsafeRawBufferPointer, baseByteCount: UInt64)
        -> BaseFingerprint
    {
        let hash = XXH3_128bits_withSeed(
            sampledBytes.baseAddress, sampledBytes.count, baseByteCount)
        return BaseFingerprint(low: hash.low64, high: hash.high64)
    }
}
