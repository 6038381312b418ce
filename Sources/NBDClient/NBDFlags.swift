// Flag sets passed to libnbd calls, named after the NBD spec words. Values are libnbd's
// `LIBNBD_CMD_FLAG_*` and `LIBNBD_STRICT_*` constants (libnbd.h), which libnbd maps to the wire.

import CNBD

/// Flags of one command, `LIBNBD_CMD_FLAG_*`.
public struct NBDCommandFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_CMD_FLAG_FUA`: the write is durable before the reply.
    public static let fua = NBDCommandFlags(rawValue: LIBNBD_CMD_FLAG_FUA)
    /// `NBD_CMD_FLAG_NO_HOLE`: WRITE_ZEROES must allocate, not punch a hole.
    public static let noHole = NBDCommandFlags(rawValue: LIBNBD_CMD_FLAG_NO_HOLE)
    /// `NBD_CMD_FLAG_DF`: a structured READ reply must be one chunk.
    public static let dontFragment = NBDCommandFlags(rawValue: LIBNBD_CMD_FLAG_DF)
    /// `NBD_CMD_FLAG_REQ_ONE`: BLOCK_STATUS returns one extent per context.
    public static let requestOne = NBDCommandFlags(rawValue: LIBNBD_CMD_FLAG_REQ_ONE)
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail WRITE_ZEROES with ENOTSUP unless it is fast.
    public static let fastZero = NBDCommandFlags(rawValue: LIBNBD_CMD_FLAG_FAST_ZERO)
}

/// What libnbd checks locally before sending a command, `LIBNBD_STRICT_*`
/// (`nbd_set_strict_mode`). Tests clear these to see the server's own answer to a bad request.
public struct NBDStrictMode: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Refuse commands the server did not advertise (for example WRITE on a read-only export).
    public static let commands = NBDStrictMode(rawValue: LIBNBD_STRICT_COMMANDS)
    /// Refuse flags the server did not advertise or that do not fit the command.
    public static let flags = NBDStrictMode(rawValue: LIBNBD_STRICT_FLAGS)
    /// Refuse requests outside the export.
    public static let bounds = NBDStrictMode(rawValue: LIBNBD_STRICT_BOUNDS)
    /// Refuse zero-length requests.
    public static let zeroSize = NBDStrictMode(rawValue: LIBNBD_STRICT_ZERO_SIZE)
    /// Refuse requests not aligned to the server's minimum block size.
    public static let align = NBDStrictMode(rawValue: LIBNBD_STRICT_ALIGN)
}

/// One extent of a `NBD_CMD_BLOCK_STATUS` reply: a length and the context's flags for it
/// (for `base:allocation`: `NBD_STATE_HOLE` = 1, `NBD_STATE_ZERO` = 2).
public struct BlockStatusExtent: Equatable, Sendable, CustomStringConvertible {
    public let length: UInt64
    public let flags: UInt32

    public var description: String { "(\(length), \(flags))" }
}

/// The block size constraints of `NBD_INFO_BLOCK_SIZE` (`nbd_get_block_size`); 0 when the
/// server sent none.
public struct BlockSizeConstraints: Equatable, Sendable {
    public let minimum: UInt64
    public let preferred: UInt64
    public let maximum: UInt64
}

/// One chunk of a structured READ reply, as `nbd_pread_structured` reports it.
public struct ReadChunk: Equatable, Sendable {
    /// `LIBNBD_READ_DATA`, `LIBNBD_READ_HOLE` or `LIBNBD_READ_ERROR`.
    public enum Status: Equatable, Sendable {
        case data
        case hole
        case error
        case unknown(UInt32)
    }

    public let byteOffset: UInt64
    public let byteCount: Int
    public let status: Status

    init(byteOffset: UInt64, byteCount: Int, status rawStatus: UInt32) {
        self.byteOffset = byteOffset
        self.byteCount = byteCount
        switch rawStatus {
        case UInt32(LIBNBD_READ_DATA): status = .data
        case UInt32(LIBNBD_READ_HOLE): status = .hole
        case UInt32(LIBNBD_READ_ERROR): status = .error
        default: status = .unknown(rawStatus)
        }
    }
}
