// The fixed parts of structured reply chunk payloads (../shared/reference/nbd-protocol.md,
// "Structured reply types"): the offset before OFFSET_DATA's bytes, an error chunk's error and
// message, and a block status chunk's prefix and descriptors. Encoders store into caller
// buffers, so the hot path allocates nothing; parsers are for tests, clients and the fuzzers.

/// The part of `NBD_REPLY_TYPE_OFFSET_DATA` before the data: the data's absolute offset.
public struct OffsetDataPrefix: Equatable, Sendable {
    /// Bytes of the prefix; the chunk's length is this plus the data's.
    public static let byteCount = 8

    public var offset: UInt64

    public init(offset: UInt64) { self.offset = offset }

    public init(parsing bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        guard bytes.count >= Self.byteCount else {
            throw ProtocolViolation("OFFSET_DATA chunk of \(bytes.count) bytes")
        }
        offset = bytes.loadBigEndian(at: 0, as: UInt64.self)
    }

    /// Returns `byteCount`.
    @inlinable
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        buffer.storeBigEndian(offset, at: 0)
        return Self.byteCount
    }
}

/// The payload of `NBD_REPLY_TYPE_ERROR`: error value, message length, message.
public struct ErrorChunkPayload: Equatable, Sendable {
    /// Bytes before the message: 32-bit error and 16-bit message length.
    public static let fixedByteCount = 6
    /// Longest message cowbd sends: the spec's SHOULD for strings. Longer ones are cut at a
    /// character boundary; the server's log has the whole error.
    public static let maxMessageByteCount = 256
    /// Bytes of the longest payload cowbd sends.
    public static let maxByteCount = fixedByteCount + maxMessageByteCount

    public var error: UInt32
    public var message: String

    public init(error: UInt32, message: String) {
        self.error = error
        self.message = message
    }

    /// Parses a whole payload; the message must fill it exactly.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        guard bytes.count >= Self.fixedByteCount else {
            throw ProtocolViolation("error chunk of \(bytes.count) bytes")
        }
        error = bytes.loadBigEndian(at: 0, as: UInt32.self)
        let messageByteCount = Int(bytes.loadBigEndian(at: 4, as: UInt16.self))
        guard error != 0, messageByteCount == bytes.count - Self.fixedByteCount else {
            throw ProtocolViolation(
                "error chunk with error \(error) and a \(messageByteCount)-byte message in \(bytes.count) bytes"
            )
        }
        message = String(decoding: bytes[Self.fixedByteCount...], as: UTF8.self)
    }

    /// Stores the payload, the message cut to `maxMessageByteCount` at a character boundary.
    /// Returns the bytes stored (at most `maxByteCount`).
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(error != 0, "an error chunk carries a nonzero error")
        precondition(buffer.count >= Self.maxByteCount, "room for the longest error payload")
        var messageByteCount = 0
        var firstLeftOut: UInt8? = nil
        for byte in message.utf8 {
            guard messageByteCount < Self.maxMessageByteCount else {
                firstLeftOut = byte
                break
            }
            buffer[Self.fixedByteCount + messageByteCount] = byte
            messageByteCount += 1
        }
        if let firstLeftOut, firstLeftOut & 0xC0 == 0x80 {
            // The cut splits a character: drop its continuation bytes and its lead byte.
            while messageByteCount > 0,
                buffer[Self.fixedByteCount + messageByteCount - 1] & 0xC0 == 0x80
            {
                messageByteCount -= 1
            }
            messageByteCount -= 1
        }
        buffer.storeBigEndian(error, at: 0)
        buffer.storeBigEndian(UInt16(messageByteCount), at: 4)
        return Self.fixedByteCount + messageByteCount
    }
}

/// The start of a block status chunk's payload: the metadata context, and with extended
/// headers (`NBD_REPLY_TYPE_BLOCK_STATUS_EXT`) the number of descriptors that follow.
public struct BlockStatusPrefix: Equatable, Sendable {
    public var contextID: UInt32
    public var descriptorCount: UInt32

    public init(contextID: UInt32, descriptorCount: UInt32) {
        self.contextID = contextID
        self.descriptorCount = descriptorCount
    }

    /// 4 bytes compact, 8 extended.
    public static func byteCount(extended: Bool) -> Int { extended ? 8 : 4 }

    /// Bytes of a whole payload of `descriptorCount` descriptors.
    public static func payloadByteCount(descriptorCount: Int, extended: Bool) -> Int {
        byteCount(extended: extended)
            + descriptorCount * BlockStatusDescriptor.byteCount(extended: extended)
    }

    /// Parses the prefix of a whole payload. Compact payloads carry no count: it is taken from
    /// the length, which must be a whole number of descriptors (at least one).
    public init(parsing bytes: UnsafeRawBufferPointer, extended: Bool)
        throws(ProtocolViolation)
    {
        let prefixByteCount = Self.byteCount(extended: extended)
        let descriptorByteCount = BlockStatusDescriptor.byteCount(extended: extended)
        let descriptorsByteCount = bytes.count - prefixByteCount
        guard descriptorsByteCount >= descriptorByteCount,
            descriptorsByteCount % descriptorByteCount == 0
        else { throw ProtocolViolation("block status chunk of \(bytes.count) bytes") }
        contextID = bytes.loadBigEndian(at: 0, as: UInt32.self)
        let impliedCount = UInt32(descriptorsByteCount / descriptorByteCount)
        descriptorCount = extended ? bytes.loadBigEndian(at: 4, as: UInt32.self) : impliedCount
        guard descriptorCount == impliedCount else {
            throw ProtocolViolation(
                "block status chunk claims \(descriptorCount) descriptors and holds \(impliedCount)"
            )
        }
    }

    /// Returns `byteCount(extended:)`.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer, extended: Bool) -> Int {
        buffer.storeBigEndian(contextID, at: 0)
        if extended { buffer.storeBigEndian(descriptorCount, at: 4) }
        return Self.byteCount(extended: extended)
    }
}

/// One block status descriptor: an extent's length and its status flags. Compact: 32-bit
/// length and flags; extended: 64-bit length and 64-bit flags.
public struct BlockStatusDescriptor: Equatable, Sendable {
    public var byteCount: UInt64
    public var status: UInt32

    public init(byteCount: UInt64, status: UInt32) {
        self.byteCount = byteCount
        self.status = status
    }

    /// 8 bytes compact, 16 extended.
    public static func byteCount(extended: Bool) -> Int { extended ? 16 : 8 }

    /// Parses the descriptor at the start of `bytes`.
    public init(parsing bytes: UnsafeRawBufferPointer, extended: Bool)
        throws(ProtocolViolation)
    {
        guard bytes.count >= Self.byteCount(extended: extended) else {
            throw ProtocolViolation("block status descriptor cut short")
        }
        if extended {
            byteCount = bytes.loadBigEndian(at: 0, as: UInt64.self)
            let wideStatus = bytes.loadBigEndian(at: 8, as: UInt64.self)
            guard let narrow = UInt32(exactly: wideStatus) else {
                throw ProtocolViolation("block status flags 0x\(String(wideStatus, radix: 16))")
            }
            status = narrow
        } else {
            byteCount = UInt64(bytes.loadBigEndian(at: 0, as: UInt32.self))
            status = bytes.loadBigEndian(at: 4, as: UInt32.self)
        }
        guard byteCount > 0 else { throw ProtocolViolation("block status extent of 0 bytes") }
    }

    /// Stores the descriptor at `byteOffset`. Returns `byteCount(extended:)`.
    @discardableResult
    public func encode(
        into buffer: UnsafeMutableRawBufferPointer, at byteOffset: Int, extended: Bool
    )
        -> Int
    {
        precondition(byteCount > 0, "a block status extent is never empty")
        if extended {
            buffer.storeBigEndian(byteCount, at: byteOffset)
            buffer.storeBigEndian(UInt64(status), at: byteOffset + 8)
        } else {
            precondition(byteCount <= UInt64(UInt32.max), "a compact extent fits 32 bits")
            buffer.storeBigEndian(UInt32(byteCount), at: byteOffset)
            buffer.storeBigEndian(status, at: byteOffset + 4)
        }
        return Self.byteCount(extended: extended)
    }
}
