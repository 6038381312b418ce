// Transmission-phase reply headers, stored into caller buffers so the hot path allocates
// nothing, and whole replies of the forms the server sends (a read's data chunk, an error
// chunk). Which form a reply takes depends on what was negotiated. The encoders a reply takes
// every request are inlinable, so the server's reply costs no call into this module.

/// Encoders for reply headers, and whole small replies.
public enum Reply {
    /// Bytes in a simple reply header.
    public static let simpleByteCount = 16
    /// Bytes in a structured reply chunk header.
    public static let structuredByteCount = 20
    /// Bytes in an extended reply header.
    public static let extendedByteCount = 32
    /// Room that any reply header plus the largest fixed payload prefix needs.
    public static let maxHeaderByteCount = 64
    /// Room for any reply the server builds outside the payload buffer: a header with its
    /// fixed prefix, or a whole error chunk.
    public static let headerBufferByteCount = maxHeaderByteCount + ErrorChunkPayload.maxByteCount

    /// Bytes of a chunk header: structured (20) or extended (32).
    public static func chunkHeaderByteCount(extended: Bool) -> Int {
        extended ? extendedByteCount : structuredByteCount
    }

    /// A simple reply: magic, error, cookie. Returns the byte count.
    @inlinable
    public static func encodeSimple(
        error: UInt32, cookie: UInt64, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        buffer.storeBigEndian(Magic.simpleReply, at: 0)
        buffer.storeBigEndian(error, at: 4)
        buffer.storeBigEndian(cookie, at: 8)
        return simpleByteCount
    }

    /// A structured chunk header (20 bytes), or with `extended` an extended header (32 bytes,
    /// whose offset field echoes the request's offset). Returns the byte count.
    @inlinable
    public static func encodeChunk(
        flags: UInt16, type: ReplyType, cookie: UInt64, requestOffset: UInt64,
        payloadByteCount: UInt64,
        extended: Bool, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        if extended {
            buffer.storeBigEndian(Magic.extendedReply, at: 0)
            buffer.storeBigEndian(flags, at: 4)
            buffer.storeBigEndian(type.rawValue, at: 6)
            buffer.storeBigEndian(cookie, at: 8)
            buffer.storeBigEndian(requestOffset, at: 16)
            buffer.storeBigEndian(payloadByteCount, at: 24)
            return extendedByteCount
        }
        precondition(
            payloadByteCount <= UInt64(UInt32.max),
            "chunk payload over 4 GiB without extended headers")
        buffer.storeBigEndian(Magic.structuredReply, at: 0)
        buffer.storeBigEndian(flags, at: 4)
        buffer.storeBigEndian(type.rawValue, at: 6)
        buffer.storeBigEndian(cookie, at: 8)
        buffer.storeBigEndian(UInt32(payloadByteCount), at: 16)
        return structuredByteCount
    }

    /// The final `NBD_REPLY_TYPE_OFFSET_DATA` chunk of a read, up to where its data starts:
    /// the chunk header and the data's offset. The data (at least one byte) follows on the
    /// wire. Returns the byte count.
    @inlinable
    public static func encodeReadChunkHeader(
        cookie: UInt64, offset: UInt64, dataByteCount: Int, extended: Bool,
        into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(dataByteCount > 0, "OFFSET_DATA carries at least one byte")
        let headerByteCount = encodeChunk(
            flags: replyFlagDone, type: .offsetData, cookie: cookie, requestOffset: offset,
            payloadByteCount: UInt64(OffsetDataPrefix.byteCount + dataByteCount),
            extended: extended, into: buffer)
        return headerByteCount
            + OffsetDataPrefix(offset: offset).encode(
                into: UnsafeMutableRawBufferPointer(rebasing: buffer[headerByteCount...]))
    }

    /// A whole final `NBD_REPLY_TYPE_ERROR` chunk: header and payload. Returns the byte count
    /// (at most `headerBufferByteCount`).
    public static func encodeErrorChunk(
        _ payload: ErrorChunkPayload, cookie: UInt64, requestOffset: UInt64, extended: Bool,
        into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        let headerByteCount = chunkHeaderByteCount(extended: extended)
        let payloadByteCount = payload.encode(
            into: UnsafeMutableRawBufferPointer(rebasing: buffer[headerByteCount...]))
        let encodedHeaderByteCount = encodeChunk(
            flags: replyFlagDone, type: .error, cookie: cookie, requestOffset: requestOffset,
            payloadByteCount: UInt64(payloadByteCount), extended: extended, into: buffer)
        precondition(encodedHeaderByteCount == headerByteCount, "chunk header size")
        return headerByteCount + payloadByteCount
    }
}

/// A structured or extended reply chunk header as it comes off the wire (for tests, clients
/// and the fuzzers; the server only encodes them).
public struct ReplyChunkHeader: Equatable, Sendable {
    public var flags: UInt16
    public var type: UInt16
    public var cookie: UInt64
    /// The request's offset, echoed by extended headers; 0 in a structured header.
    public var offset: UInt64
    public var payloadByteCount: UInt64

    public init(parsing bytes: UnsafeRawBufferPointer, extended: Bool) throws(ProtocolViolation) {
        precondition(
            bytes.count == Reply.chunkHeaderByteCount(extended: extended),
            "caller reads whole chunk headers")
        let magic = bytes.loadBigEndian(at: 0, as: UInt32.self)
        guard magic == (extended ? Magic.extendedReply : Magic.structuredReply) else {
            throw ProtocolViolation("bad reply magic 0x\(String(magic, radix: 16))")
        }
        flags = bytes.loadBigEndian(at: 4, as: UInt16.self)
        type = bytes.loadBigEndian(at: 6, as: UInt16.self)
        cookie = bytes.loadBigEndian(at: 8, as: UInt64.self)
        if extended {
            offset = bytes.loadBigEndian(at: 16, as: UInt64.self)
            payloadByteCount = bytes.loadBigEndian(at: 24, as: UInt64.self)
        } else {
            offset = 0
            payloadByteCount = UInt64(bytes.loadBigEndian(at: 16, as: UInt32.self))
        }
    }
}
