// `compress --verify`: reads every block of a compressed image, checks its index entry, its
// checksum and that it decompresses to its size, then recomputes the fingerprint. Reports
// what is damaged rather than stopping at the first fault.

import CowFormat

extension CompressedBaseImage {
    /// What `verify` found.
    public struct Verification: Sendable {
        /// A block whose entry or bytes are damaged, and why (the error's text).
        public struct DamagedBlock: Sendable {
            public var blockIndex: UInt64
            public var reason: String
        }

        /// The most damaged blocks listed; the rest are only counted.
        public static let maxListedDamage = 100

        public var blockCount: UInt64 = 0
        public var zeroBlockCount: UInt64 = 0
        public var rawBlockCount: UInt64 = 0
        public var damagedBlockCount: UInt64 = 0
        public var damagedBlocks: [DamagedBlock] = []
        /// Nil when the fingerprint matches the header's; otherwise what differs.
        public var fingerprintProblem: String?
        /// Nil when the shared dictionary (if any) matches its checksum; otherwise why not
        /// (every LZ4 block is then counted damaged too).
        public var dictionaryProblem: String?

        /// No damaged block or dictionary, and the fingerprint matches.
        public var isIntact: Bool {
            damagedBlockCount == 0 && fingerprintProblem == nil && dictionaryProblem == nil
        }
    }

    /// Reads and checks every block, bypassing the cache; calls `progress` with the number of
    /// blocks checked after each one.
    public func verify(progress: (UInt64) -> Void = { _ in }) -> Verification {
        var verification = Verification()
        verification.blockCount = header.blockCount
        verification.dictionaryProblem = dictionaryProblem
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: cache.slotByteCount, alignment: 4096)
        defer { buffer.deallocate() }
        for blockIndex in 0..<header.blockCount {
            do {
                let entry = try entry(ofBlock: blockIndex)
                switch entry.storage {
                case .zero: verification.zeroBlockCount += 1
                case .raw: verification.rawBlockCount += 1
                case .lz4: break
                }
                if entry.storage != .zero { try loadBlock(blockIndex, entry, into: buffer) }
            } catch {
                verification.damagedBlockCount += 1
                if verification.damagedBlocks.count < Verification.maxListedDamage {
                    verification.damagedBlocks.append(
                        .init(blockIndex: blockIndex, reason: "\(error)"))
                }
            }
            progress(blockIndex + 1)
        }
        do {
            let computed = try fingerprint()
            if computed != header.fingerprint {
                verification.fingerprintProblem =
                    "the content fingerprint is \(computed), the header records \(header.fingerprint)"
            }
        } catch {
            verification.fingerprintProblem = "the fingerprint cannot be computed: \(error)"
        }
        return verification
    }
}
