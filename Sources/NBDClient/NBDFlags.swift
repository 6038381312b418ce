// Flag sets passed to libnbd calls, and what libnbd reports back. A command's flags are
// NBDProtocol's `CommandFlags`: libnbd's `LIBNBD_CMD_FLAG_*` (libnbd.h) are the spec's
// `NBD_CMD_FLAG_*` bits, sent as they are. `LIBNBD_STRICT_*` are libnbd's own.

import CNBD
import NBDProtocol

extension CommandFlags {
    /// The flags as libnbd takes them: `LIBNBD_CMD_FLAG_FUA` is `NBD_CMD_FLAG_FUA`, and so on
    /// for each flag libnbd knows (NBDServerTests pins them).
    var libnbdFlags: UInt32 { UInt32(rawValue) }
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
