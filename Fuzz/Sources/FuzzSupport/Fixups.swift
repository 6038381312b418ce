// Makes a mutated input consistent where cowbd's formats protect themselves with checksums or
// derived fields, so the fuzzer spends its time on the fields the parsers must judge. Offsets
// are those of docs/FORMAT.md; each fix-up skips whatever does not fit in the input.

import CowFormat

extension Array where Element == UInt8 {
    /// Store header: the XXH64 at 4088 over bytes 0..<4088.
    public mutating func fixStoreHeader() {
        guard count >= StoreHeader.byteCount else { return }
        storeLittleEndian(xxh64(0..<4088), at: 4088)
    }

    /// Compressed image: file size, block count and layout fields, every index entry's data
    /// and entry checksums, the shared dictionary's checksum (version 2), the header checksum,
    /// and the footer (a copy of the header).
    public mutating func fixCompressedImage() {
        let recordByteCount = LZ4ImageHeader.recordByteCount
        guard count >= 2 * recordByteCount else { return }
        storeLittleEndian(UInt64(count), at: 88)
        if let shift = littleEndian(at: 16, as: UInt32.self),
            let virtualByteCount = littleEndian(at: 24, as: UInt64.self),
            let geometry = try? LZ4BlockGeometry(shift: shift)
        {
            let layout = LZ4ImageHeader.layout(
                geometry: geometry, virtualByteCount: virtualByteCount)
            let blockCount = geometry.blockCount(covering: virtualByteCount)
            storeLittleEndian(blockCount, at: 32)
            storeLittleEndian(layout.indexByteOffset, at: 64)
            storeLittleEndian(layout.indexByteCount, at: 72)
            storeLittleEndian(layout.dataByteOffset, at: 80)
            fixIndexEntries(blockCount: blockCount)
            fixDictionaryChecksum(dataByteOffset: layout.dataByteOffset)
        }
        storeLittleEndian(xxh64(0..<120), at: 120)
        replaceSubrange((count - recordByteCount)..<count, with: self[0..<recordByteCount])
    }

    /// Version 2: the dictionary's checksum (bytes 104..111) over its bytes at the data
    /// offset, when they fit in the input, so mutations reach the LZ4 dictionary decode.
    private mutating func fixDictionaryChecksum(dataByteOffset: UInt64) {
        guard littleEndian(at: 8, as: UInt32.self) == 2,
            let dictionaryByteCount = littleEndian(at: 100, as: UInt32.self),
            dictionaryByteCount > 0, dataByteOffset <= UInt64(count),
            UInt64(dictionaryByteCount) <= UInt64(count) - dataByteOffset
        else { return }
        let start = Int(dataByteOffset)
        storeLittleEndian(xxh3(start..<(start + Int(dictionaryByteCount))), at: 104)
    }

    private mutating func fixIndexEntries(blockCount: UInt64) {
        let indexStart = Int(LZ4ImageHeader.indexByteOffset)
        let entryByteCount = LZ4BlockEntry.byteCount
        let fitting = UInt64(Swift.max(0, count - indexStart) / entryByteCount)
        for blockIndex in 0..<Swift.min(blockCount, fitting) {
            let entry = indexStart + Int(blockIndex) * entryByteCount
            if let dataOffset = littleEndian(at: entry, as: UInt64.self),
                let storedByteCount = littleEndian(at: entry + 8, as: UInt32.self),
                dataOffset <= UInt64(count),
                UInt64(storedByteCount) <= UInt64(count) - dataOffset
            {
                let start = Int(dataOffset)
                storeLittleEndian(xxh3(start..<(start + Int(storedByteCount))), at: entry + 16)
            }
            storeLittleEndian(xxh3(entry..<(entry + 24), seed: blockIndex), at: entry + 24)
        }
    }

    /// Native diff: the header checksum, each record's checksum, and the trailer's counts and
    /// whole-stream checksum, up to the first record that does not fit or has an unknown kind.
    public mutating func fixNativeDiff() {
        guard count >= DiffHeader.byteCount, self[0..<8].elementsEqual(DiffHeader.magic) else {
            return
        }
        storeLittleEndian(xxh3(0..<56), at: 56)
        var position = DiffHeader.byteCount
        var extentCount: UInt64 = 0
        var dataByteCount: UInt64 = 0
        while position + DiffRecord.byteCount <= count {
            guard let kind = littleEndian(at: position, as: UInt32.self),
                let second = littleEndian(at: position + 16, as: UInt64.self)
            else { return }
            let payloadByteCount: UInt64
            switch kind {
            case DiffRecord.Kind.data.rawValue: payloadByteCount = second
            case DiffRecord.Kind.zero.rawValue: payloadByteCount = 0
            case DiffRecord.Kind.end.rawValue:
                storeLittleEndian(extentCount, at: position + 8)
                storeLittleEndian(dataByteCount, at: position + 16)
                storeLittleEndian(xxh3(0..<(position + 24)), at: position + 24)
                return
            default: return
            }
            let payloadStart = position + DiffRecord.byteCount
            guard payloadByteCount <= UInt64(count - payloadStart) else { return }
            let payloadEnd = payloadStart + Int(payloadByteCount)
            let checksum = DiffChecksum()
            withUnsafeBytes { bytes in
                checksum.update(UnsafeRawBufferPointer(rebasing: bytes[position..<(position + 24)]))
                checksum.update(UnsafeRawBufferPointer(rebasing: bytes[payloadStart..<payloadEnd]))
            }
            storeLittleEndian(checksum.digest, at: position + 24)
            extentCount += 1
            dataByteCount += payloadByteCount
            position = payloadEnd
        }
    }
}
