// Transmission-phase requests: the fixed header (compact, or extended with 64-bit lengths)
// parsed from bytes, then checked against the negotiated session into a `Request` whose range
// lies inside the export and whose flags are valid for its command.

/// The client broke a MUST of the protocol badly enough that the connection must end.
public struct ProtocolViolation: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A request header as it came off the wire.
public struct RequestHeader: Equatable, Sendable {
    /// Bytes in a request header without extended headers.
    public static let compactByteCount = 28
    /// Bytes in a request header with extended headers.
    public static let extendedByteCount = 32

    public var flags: CommandFlags
    public var type: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt64

    public init(flags: CommandFlags, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt64) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Parses a whole header (28 bytes compact, 32 extended). Inlinable: it runs once a
    /// request, on the connection's reader.
    @inlinable
    public init(parsing bytes: UnsafeRawBufferPointer, extended: Bool) throws(ProtocolViolation) {
        let expected = extended ? Self.extendedByteCount : Self.compactByteCount
        precondition(bytes.count == expected, "caller reads whole headers")
        let magic = bytes.loadBigEndian(at: 0, as: UInt32.self)
        guard magic == (extended ? Magic.extendedRequest : Magic.request) else {
            throw ProtocolViolation("bad request magic 0x\(String(magic, radix: 16))")
        }
        flags = CommandFlags(rawValue: bytes.loadBigEndian(at: 4, as: UInt16.self))
        type = bytes.loadBigEndian(at: 6, as: UInt16.self)
        cookie = bytes.loadBigEndian(at: 8, as: UInt64.self)
        offset = bytes.loadBigEndian(at: 16, as: UInt64.self)
        length =
            extended
            ? bytes.loadBigEndian(at: 24, as: UInt64.self)
            : UInt64(bytes.loadBigEndian(at: 24, as: UInt32.self))
    }

    /// Encodes the header (for tests and clients).
    public func encoded(extended: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(extended ? Magic.extendedRequest : Magic.request)
        bytes.appendBigEndian(flags.rawValue)
        bytes.appendBigEndian(type)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(offset)
        if extended {
            bytes.appendBigEndian(length)
        } else {
            bytes.appendBigEndian(UInt32(truncatingIfNeeded: length))
        }
        return bytes
    }

    /// Bytes of payload that follow this header on the wire. A WRITE always carries its
    /// length in bytes. With extended headers `NBD_CMD_FLAG_PAYLOAD_LEN` says the length is a
    /// payload's on any command (the EXTENDED_HEADERS extension, which
    /// ../shared/reference/nbd-protocol.md refers to): cowbd takes no payload but WRITE's, so
    /// the server reads such a payload to stay in step and refuses the request (`validate`).
    @inlinable
    public func payloadByteCount(extended: Bool) -> UInt64 {
        if type == Command.write.rawValue { return length }
        return extended && flags.contains(.payloadLength) ? length : 0
    }
}

/// A request that may be executed: known command, valid flags, range inside the export.
public struct Request: Equatable, Sendable {
    public var command: Command
    public var flags: CommandFlags
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt64
}

/// Why a well-formed request is refused; the connection goes on after the error reply.
public struct RequestRejection: Error, Equatable, Sendable {
    public var error: ErrorCode
    public var message: String

    public init(error: ErrorCode, message: String) {
        self.error = error
        self.message = message
    }
}

extension NegotiatedSession {
    /// Checks a header against what was negotiated (../shared/reference/nbd-protocol.md,
    /// "Request types" and "Error values").
    public func validate(_ header: RequestHeader) -> Result<Request, RequestRejection> {
        func reject(_ error: ErrorCode, _ message: String) -> Result<Request, RequestRejection> {
            .failure(RequestRejection(error: error, message: message))
        }
        guard let command = Command(rawValue: header.type) else {
            return reject(.invalid, "unknown command \(header.type)")
        }
        var allowed: CommandFlags = [.fua]
        switch command {
        case .read: if structuredReplies { allowed.insert(.dontFragment) }
        // With extended headers a client may mark a WRITE's length as its payload's; on other
        // commands cowbd accepts no payload, so the flag is refused there.
        case .write: if extendedHeaders { allowed.insert(.payloadLength) }
        case .writeZeroes: allowed.formUnion([.noHole, .fastZero])
        case .blockStatus: allowed.insert(.requestOne)
        default: break
        }
        guard header.flags.subtracting(allowed).isEmpty else {
            return reject(
                .invalid,
                "flags 0x\(String(header.flags.rawValue, radix: 16)) are not valid for \(command)")
        }
        let request = Request(
            command: command, flags: header.flags, cookie: header.cookie, offset: header.offset,
            length: header.length)
        switch command {
        case .disconnect:
            return .success(request)
        case .flush:
            // Offset and length are reserved and MUST be zero. The spec leaves what a server
            // does with other values to it; cowbd is liberal and ignores them (a flush has no
            // range), and the request carries zeros so every `Request` lies inside the export.
            return .success(
                Request(
                    command: .flush, flags: header.flags, cookie: header.cookie, offset: 0,
                    length: 0))
        case .write, .trim, .writeZeroes:
            if export.isReadOnly { return reject(.perm, "the export is read-only") }
        case .blockStatus:
            if metaContexts.isEmpty {
                return reject(.invalid, "no metadata context was negotiated")
            }
        case .read, .cache:
            break
        }
        if command == .read && header.length > UInt64(export.maximumPayloadByteCount) {
            return reject(.overflow, "read of \(header.length) bytes exceeds the maximum payload")
        }
        // The spec allows EOVERFLOW for a command without payload longer than the maximum
        // payload; a CACHE that long would keep a thread reading ahead for too long.
        if command == .cache && header.length > export.maximumCacheByteCount {
            return reject(
                .overflow,
                "cache of \(header.length) bytes exceeds \(export.maximumCacheByteCount) bytes")
        }
        guard header.offset <= export.byteCount, header.length <= export.byteCount - header.offset
        else {
            // The spec asks for ENOSPC on writes past the end, EINVAL for the rest.
            let isWrite = command == .write || command == .writeZeroes
            return reject(
                isWrite ? .noSpace : .invalid,
                "\(header.length) bytes at \(header.offset) lie beyond the export (\(export.byteCount) bytes)"
            )
        }
        return .success(request)
    }
}
