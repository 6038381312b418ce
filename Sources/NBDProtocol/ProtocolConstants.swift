// Numbers the NBD protocol fixes (../shared/reference/nbd-protocol.md, "Values"), named as
// the spec names them. Limits that are cowbd's own choices live with the code that enforces them.

/// Magic numbers of the handshake and the transmission phase.
public enum Magic {
    /// `NBDMAGIC`, the first 8 bytes the server sends.
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943
    /// `IHAVEOPT`: the newstyle greeting, and the start of every option.
    public static let option: UInt64 = 0x4948_4156_454F_5054
    /// Start of every fixed-newstyle option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// `NBD_REQUEST_MAGIC`.
    public static let request: UInt32 = 0x2560_9513
    /// `NBD_EXTENDED_REQUEST_MAGIC` (EXTENDED_HEADERS extension).
    public static let extendedRequest: UInt32 = 0x21e4_1c71
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// `NBD_STRUCTURED_REPLY_MAGIC`.
    public static let structuredReply: UInt32 = 0x668e_33ef
    /// `NBD_EXTENDED_REPLY_MAGIC` (EXTENDED_HEADERS extension).
    public static let extendedReply: UInt32 = 0x6e8a_278c
}

/// Handshake flags the server sends (16 bits).
public struct HandshakeFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_NO_ZEROES`.
    public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
}

/// Client flags (32 bits) sent in reply to the greeting.
public struct ClientFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_C_NO_ZEROES`.
    public static let noZeroes = ClientFlags(rawValue: 1 << 1)
}

/// Transmission flags (16 bits) describing an export.
public struct TransmissionFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_HAS_FLAGS`: always set.
    public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_READ_ONLY`.
    public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
    /// `NBD_FLAG_SEND_FLUSH`.
    public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
    /// `NBD_FLAG_SEND_FUA`.
    public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
    /// `NBD_FLAG_ROTATIONAL`.
    public static let rotational = TransmissionFlags(rawValue: 1 << 4)
    /// `NBD_FLAG_SEND_TRIM`.
    public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
    /// `NBD_FLAG_SEND_DF`: only with structured replies.
    public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    /// `NBD_FLAG_SEND_CACHE`.
    public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
}

/// Option numbers (`NBD_OPT_*`).
public enum Option: UInt32, Sendable {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
public enum OptionReply: UInt32, Sendable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errUnsup = 0x8000_0001
    case errPolicy = 0x8000_0002
    case errInvalid = 0x8000_0003
    case errPlatform = 0x8000_0004
    case errTLSRequired = 0x8000_0005
    case errUnknown = 0x8000_0006
    case errShutdown = 0x8000_0007
    case errBlockSizeRequired = 0x8000_0008
    case errTooBig = 0x8000_0009
    case errExtendedHeaderRequired = 0x8000_000a
}

/// Information types of `NBD_REP_INFO` (`NBD_INFO_*`).
public enum InfoType: UInt16, Sendable {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3
}

/// Request types (`NBD_CMD_*`).
public enum Command: UInt16, Sendable {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7
}

/// Command flags (16 bits) of a request.
public struct CommandFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_CMD_FLAG_FUA`.
    public static let fua = CommandFlags(rawValue: 1 << 0)
    /// `NBD_CMD_FLAG_NO_HOLE`.
    public static let noHole = CommandFlags(rawValue: 1 << 1)
    /// `NBD_CMD_FLAG_DF`.
    public static let dontFragment = CommandFlags(rawValue: 1 << 2)
    /// `NBD_CMD_FLAG_REQ_ONE`.
    public static let requestOne = CommandFlags(rawValue: 1 << 3)
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    public static let fastZero = CommandFlags(rawValue: 1 << 4)
    /// `NBD_CMD_FLAG_PAYLOAD_LEN` (EXTENDED_HEADERS): the length is a payload's; cowbd takes
    /// one with WRITE only.
    public static let payloadLength = CommandFlags(rawValue: 1 << 5)
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
public enum ReplyType: UInt16, Sendable {
    case none = 0
    case offsetData = 1
    case offsetHole = 2
    case blockStatus = 5
    case blockStatusExtended = 6
    case error = 0x8001
    case errorOffset = 0x8002
}

/// `NBD_REPLY_FLAG_DONE`.
public let replyFlagDone: UInt16 = 1

/// Error values of replies (`NBD_E*`).
public enum ErrorCode: UInt32, Sendable {
    case perm = 1
    case io = 5
    case noMemory = 12
    case invalid = 22
    case noSpace = 28
    case overflow = 75
    case notSupported = 95
    case shutdown = 108
}

/// `base:allocation` status bits.
public enum AllocationState {
    /// `NBD_STATE_HOLE`.
    public static let hole: UInt32 = 1 << 0
    /// `NBD_STATE_ZERO`.
    public static let zero: UInt32 = 1 << 1
}
