// NBD numbers for tests that send raw bytes (nbd-protocol.md, "Values"). Written out from the
// spec here, not taken from NBDProtocol, so a wrong constant in the server cannot hide behind
// the same wrong constant in the test.

/// Spec numbers used by the raw tests (nbd-protocol.md, "Values").
public enum Wire {
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    public static let optionMagic: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
    public static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    public static let requestMagic: UInt32 = 0x2560_9513
    public static let extendedRequestMagic: UInt32 = 0x21e4_1c71
    public static let simpleReplyMagic: UInt32 = 0x6744_6698
    public static let structuredReplyMagic: UInt32 = 0x668e_33ef
    public static let extendedReplyMagic: UInt32 = 0x6e8a_278c
    public static let flagFixedNewstyle: UInt16 = 1
    public static let flagNoZeroes: UInt16 = 2
    public static let optExportName: UInt32 = 1
    public static let optAbort: UInt32 = 2
    public static let optList: UInt32 = 3
    public static let optGo: UInt32 = 7
    public static let optExtendedHeaders: UInt32 = 11
    public static let repAck: UInt32 = 1
    public static let repInfo: UInt32 = 3
    public static let repErrUnsup: UInt32 = 0x8000_0001
    public static let cmdRead: UInt16 = 0
    public static let cmdWrite: UInt16 = 1
    public static let cmdDisc: UInt16 = 2
    public static let replyTypeNone: UInt16 = 0
    public static let replyTypeOffsetData: UInt16 = 1
    public static let replyFlagDone: UInt16 = 1
}

/// Big-endian encoding, as the protocol sends every integer.
public func bigEndian<Value: FixedWidthInteger>(_ value: Value) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}
