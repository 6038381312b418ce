// The byte layouts NBDProtocol owns besides requests and the handshake's options: option
// headers, client flags, read chunks, error chunks and block status payloads, checked against
// bytes written out from the spec, every truncation and the bad field values.

import NBDProtocol
import Testing

/// Encodes with `body` into a buffer of `byteCount` bytes and returns what it stored.
private func encoded(byteCount: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0xAA, count: byteCount)
    let used = bytes.withUnsafeMutableBytes { body($0) }
    return Array(bytes[..<used])
}

private let optionMagic: [UInt8] = Array("IHAVEOPT".utf8)

@Test func optionHeaderParsesTheSpecsLayout() throws {
    let bytes = optionMagic + [0, 0, 0, 7] + [0, 0, 0x10, 0x00]
    let header = try bytes.withUnsafeBytes { try OptionHeader(parsing: $0) }
    #expect(header == OptionHeader(option: 7, dataByteCount: 4096))
    #expect(encoded(byteCount: 16) { header.encode(into: $0) } == bytes)
}

@Test func optionHeaderWithABadMagicOrTooMuchDataIsAProtocolViolation() {
    var badMagic = optionMagic + [0, 0, 0, 7, 0, 0, 0, 0]
    badMagic[0] ^= 1
    #expect(throws: ProtocolViolation.self) {
        try badMagic.withUnsafeBytes { try OptionHeader(parsing: $0) }
    }
    let limit = Handshake.maxOptionByteCount
    for length in [limit + 1, UInt32.max] {
        var bytes = optionMagic + [0, 0, 0, 7]
        bytes += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF)]
        bytes.append(UInt8(length & 0xFF))
        #expect(throws: ProtocolViolation.self, "option data of \(length) bytes") {
            try bytes.withUnsafeBytes { try OptionHeader(parsing: $0) }
        }
    }
    let atLimit = OptionHeader(option: 10, dataByteCount: limit)
    let bytes = encoded(byteCount: 16) { atLimit.encode(into: $0) }
    #expect((try? bytes.withUnsafeBytes { try OptionHeader(parsing: $0) }) == atLimit)
}

@Test func clientFlagsAreA32BitBigEndianWord() {
    let bytes: [UInt8] = [0, 0, 0, 3]
    let flags = bytes.withUnsafeBytes { ClientFlags(parsing: $0) }
    #expect(flags == [.fixedNewstyle, .noZeroes])
    #expect(encoded(byteCount: 4) { flags.encode(into: $0) } == bytes)
}

@Test func readChunkHeaderIsTheChunkHeaderThenTheDataOffset() throws {
    let structured = encoded(byteCount: Reply.maxHeaderByteCount) {
        Reply.encodeReadChunkHeader(
            cookie: 9, offset: 0x1_0000_0001, dataByteCount: 512, extended: false, into: $0)
    }
    #expect(
        structured == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1] + [0, 0, 0, 0, 0, 0, 0, 9]
            + [0, 0, 0x02, 0x08] + [0, 0, 0, 1, 0, 0, 0, 1])
    let extended = encoded(byteCount: Reply.maxHeaderByteCount) {
        Reply.encodeReadChunkHeader(
            cookie: 9, offset: 4096, dataByteCount: 1, extended: true, into: $0)
    }
    #expect(extended.count == 40)
    #expect(Array(extended[0..<8]) == [0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 1])
    #expect(Array(extended[16..<24]) == [0, 0, 0, 0, 0, 0, 0x10, 0], "request offset echoed")
    #expect(Array(extended[24..<32]) == [0, 0, 0, 0, 0, 0, 0, 9], "8-byte prefix + 1 data byte")
    #expect(Array(extended[32..<40]) == [0, 0, 0, 0, 0, 0, 0x10, 0], "OFFSET_DATA offset")
    let header = try extended[..<32].withUnsafeBytes {
        try ReplyChunkHeader(parsing: $0, extended: true)
    }
    #expect(header.type == ReplyType.offsetData.rawValue && header.payloadByteCount == 9)
    let prefix = try extended[32...].withUnsafeBytes { try OffsetDataPrefix(parsing: $0) }
    #expect(prefix == OffsetDataPrefix(offset: 4096))
    #expect(throws: ProtocolViolation.self) {
        try [UInt8](repeating: 0, count: 7).withUnsafeBytes { try OffsetDataPrefix(parsing: $0) }
    }
}

@Test func errorChunkCarriesErrorLengthAndMessageAfterItsHeader() throws {
    let payload = ErrorChunkPayload(error: 22, message: "bad")
    for extended in [false, true] {
        let bytes = encoded(byteCount: Reply.headerBufferByteCount) {
            Reply.encodeErrorChunk(
                payload, cookie: 5, requestOffset: 7, extended: extended, into: $0)
        }
        let headerByteCount = extended ? 32 : 20
        #expect(bytes.count == headerByteCount + 9)
        #expect(Array(bytes[6..<8]) == [0x80, 0x01], "NBD_REPLY_TYPE_ERROR")
        #expect(Array(bytes[headerByteCount...]) == [0, 0, 0, 22, 0, 3] + Array("bad".utf8))
        let header = try bytes[..<headerByteCount].withUnsafeBytes {
            try ReplyChunkHeader(parsing: $0, extended: extended)
        }
        #expect(header.flags == replyFlagDone && header.cookie == 5 && header.payloadByteCount == 9)
        let parsed = try bytes[headerByteCount...].withUnsafeBytes {
            try ErrorChunkPayload(parsing: $0)
        }
        #expect(parsed == payload)
    }
}

@Test func errorMessagesAreCutAtTheLimitOnACharacterBoundary() throws {
    // 255 ASCII bytes then a 3-byte character: cutting at 256 would split it.
    let message = String(repeating: "a", count: 255) + "€" + "tail"
    let bytes = encoded(byteCount: ErrorChunkPayload.maxByteCount) {
        ErrorChunkPayload(error: 5, message: message).encode(into: $0)
    }
    #expect(bytes.count == ErrorChunkPayload.fixedByteCount + 255)
    let parsed = try bytes.withUnsafeBytes { try ErrorChunkPayload(parsing: $0) }
    #expect(parsed.message == String(repeating: "a", count: 255))
    let long = encoded(byteCount: ErrorChunkPayload.maxByteCount) {
        ErrorChunkPayload(error: 5, message: String(repeating: "b", count: 5000)).encode(into: $0)
    }
    #expect(long.count == ErrorChunkPayload.maxByteCount)
}

@Test func errorPayloadsWithBadLengthsOrNoErrorAreRefused() {
    let cases: [[UInt8]] = [
        [0, 0, 0, 22, 0],  // cut short
        [0, 0, 0, 22, 0, 4, 0x61],  // message longer than the payload
        [0, 0, 0, 22, 0, 0, 0x61],  // bytes after the message
        [0, 0, 0, 0, 0, 0],  // error zero
    ]
    for bytes in cases {
        #expect(throws: ProtocolViolation.self, "\(bytes)") {
            try bytes.withUnsafeBytes { try ErrorChunkPayload(parsing: $0) }
        }
    }
}

@Test func blockStatusPayloadsMatchTheCompactAndExtendedLayouts() throws {
    let descriptors = [
        BlockStatusDescriptor(byteCount: 4096, status: 3),
        BlockStatusDescriptor(byteCount: 65536, status: 0),
    ]
    func payload(extended: Bool) -> [UInt8] {
        encoded(
            byteCount: BlockStatusPrefix.payloadByteCount(descriptorCount: 2, extended: extended)
        ) { buffer in
            var used = BlockStatusPrefix(contextID: 1, descriptorCount: 2)
                .encode(into: buffer, extended: extended)
            for descriptor in descriptors {
                used += descriptor.encode(into: buffer, at: used, extended: extended)
            }
            return used
        }
    }
    let compact = payload(extended: false)
    #expect(
        compact == [0, 0, 0, 1] + [0, 0, 0x10, 0, 0, 0, 0, 3] + [0, 1, 0, 0, 0, 0, 0, 0])
    let extended = payload(extended: true)
    #expect(
        extended == [0, 0, 0, 1, 0, 0, 0, 2]
            + [0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 3]
            + [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    for (bytes, isExtended) in [(compact, false), (extended, true)] {
        let prefix = try bytes.withUnsafeBytes {
            try BlockStatusPrefix(parsing: $0, extended: isExtended)
        }
        #expect(prefix == BlockStatusPrefix(contextID: 1, descriptorCount: 2))
        let descriptorByteCount = BlockStatusDescriptor.byteCount(extended: isExtended)
        let start = BlockStatusPrefix.byteCount(extended: isExtended)
        let second = try bytes[(start + descriptorByteCount)...].withUnsafeBytes {
            try BlockStatusDescriptor(parsing: $0, extended: isExtended)
        }
        #expect(second == descriptors[1])
    }
}

@Test func extendedDescriptorsCarryLengthsBeyond32Bits() throws {
    let huge = BlockStatusDescriptor(byteCount: 1 << 40, status: 1)
    let bytes = encoded(byteCount: 16) { huge.encode(into: $0, at: 0, extended: true) }
    #expect(bytes == [0, 0, 1, 0, 0, 0, 0, 0] + [0, 0, 0, 0, 0, 0, 0, 1])
    #expect(
        try bytes.withUnsafeBytes { try BlockStatusDescriptor(parsing: $0, extended: true) } == huge
    )
}

@Test func malformedBlockStatusPayloadsAreRefused() {
    let cases: [([UInt8], Bool)] = [
        ([0, 0, 0, 1], false),  // no descriptor
        ([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], false),  // part of a descriptor
        ([0, 0, 0, 1, 0, 0, 0, 2] + [UInt8](repeating: 1, count: 16), true),  // count says 2
    ]
    for (bytes, extended) in cases {
        #expect(throws: ProtocolViolation.self, "\(bytes)") {
            try bytes.withUnsafeBytes { try BlockStatusPrefix(parsing: $0, extended: extended) }
        }
    }
    let zeroLength: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 3]
    #expect(throws: ProtocolViolation.self) {
        try zeroLength.withUnsafeBytes { try BlockStatusDescriptor(parsing: $0, extended: false) }
    }
    let wideStatus: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1] + [0, 0, 0, 1, 0, 0, 0, 0]
    #expect(throws: ProtocolViolation.self) {
        try wideStatus.withUnsafeBytes { try BlockStatusDescriptor(parsing: $0, extended: true) }
    }
}
