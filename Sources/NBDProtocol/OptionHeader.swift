// The fixed-size messages a client sends in the handshake before option data: its 32-bit flags
// and the 16-byte header of every option. The option's data is `Handshake`'s business.

/// The header of one client option: `IHAVEOPT`, the option number and its data length
/// (../shared/reference/nbd-protocol.md, "Newstyle negotiation").
public struct OptionHeader: Equatable, Sendable {
    /// Bytes of an option header on the wire.
    public static let byteCount = 16

    /// The option number (`NBD_OPT_*`), known to cowbd or not.
    public var option: UInt32
    /// Bytes of option data that follow the header.
    public var dataByteCount: UInt32

    public init(option: UInt32, dataByteCount: UInt32) {
        self.option = option
        self.dataByteCount = dataByteCount
    }

    /// Parses a whole header. A bad magic, or data longer than `Handshake.maxOptionByteCount`
    /// (checked before anyone allocates for it), ends the connection.
    public init(parsing bytes: UnsafeRawBufferPointer) throws(ProtocolViolation) {
        precondition(bytes.count == Self.byteCount, "caller reads whole option headers")
        guard bytes.loadBigEndian(at: 0, as: UInt64.self) == Magic.option else {
            throw ProtocolViolation("bad option magic")
        }
        option = bytes.loadBigEndian(at: 8, as: UInt32.self)
        dataByteCount = bytes.loadBigEndian(at: 12, as: UInt32.self)
        guard dataByteCount <= Handshake.maxOptionByteCount else {
            throw ProtocolViolation(
                "option \(option) has \(dataByteCount) bytes of data (limit \(Handshake.maxOptionByteCount))"
            )
        }
    }

    /// Stores the header (for tests and clients). Returns `byteCount`.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        buffer.storeBigEndian(Magic.option, at: 0)
        buffer.storeBigEndian(option, at: 8)
        buffer.storeBigEndian(dataByteCount, at: 12)
        return Self.byteCount
    }
}

extension ClientFlags {
    /// Bytes of the client flags on the wire.
    public static let byteCount = 4

    /// Reads the 32-bit client flags; whether they are acceptable is `Handshake`'s decision.
    public init(parsing bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Self.byteCount, "caller reads whole client flags")
        self.init(rawValue: bytes.loadBigEndian(at: 0, as: UInt32.self))
    }

    /// Stores the flags (for tests and clients). Returns `byteCount`.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        buffer.storeBigEndian(rawValue, at: 0)
        return Self.byteCount
    }
}
