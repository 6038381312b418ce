// Transmission-phase reply headers and fixed payload parts, stored into caller buffers so the
// hot path allocates nothing. Which form a reply takes depends on what was negotiated.

/// Encoders for reply headers and payload prefixes.
public enum Reply {
    /// Bytes in a simple reply header.
    public static let simpleByteCount = 16
    /// Bytes in a structured reply chunk header.
    public static let structuredByteCount = 20
    /// Bytes in an extended reply header.
    public static let extendedByteCount = 32
    /// Room that any reply header plus the largest fixed payload prefix needs.
    public static let maxHeaderByteCount = 64

    /// A simple reply: magic, error, cookie. Returns the byte count.
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

    /// The payload of `NBD_REPLY_TYPE_ERROR`: error, message length, message.
    public static func encodeErrorPayload(
        _ error: ErrorCode, message: String, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        let utf8 = message.utf8.prefix(min(4096, buffer.count - 6))
        buffer.storeBigEndian(error.rawValue, at: 0)
        buffer.storeBigEndian(UInt16(utf8.count), at: 4)
        var position = 6
        for byte in utf8 {
            buffer[position] = byte
            position += 1
        }
        return position
    }
}
