// The fixed-newstyle handshake as a state machine over whole options: bytes in, reply bytes
// and a decision out. No sockets: the server reads options and writes what this returns.
// Old-style negotiation is not offered.

/// One export the server offers, as the handshake describes it.
public struct ExportDescription: Sendable {
    public var name: String
    public var description: String
    public var byteCount: UInt64
    public var isReadOnly: Bool
    /// `NBD_INFO_BLOCK_SIZE` values.
    public var minimumBlockByteCount: UInt32
    public var preferredBlockByteCount: UInt32
    public var maximumPayloadByteCount: UInt32
    /// Checkpoints served as `qemu:dirty-bitmap:NAME` contexts, oldest first.
    public var dirtyBitmapNames: [String] = []

    public init(
        name: String, description: String, byteCount: UInt64, isReadOnly: Bool,
        minimumBlockByteCount: UInt32 = 1, preferredBlockByteCount: UInt32 = 4096,
        maximumPayloadByteCount: UInt32 = 32 << 20
    ) {
        self.name = name
        self.description = description
        self.byteCount = byteCount
        self.isReadOnly = isReadOnly
        self.minimumBlockByteCount = minimumBlockByteCount
        self.preferredBlockByteCount = preferredBlockByteCount
        self.maximumPayloadByteCount = maximumPayloadByteCount
    }

    /// Longest NBD_CMD_CACHE served: the maximum payload, the bound the spec lets a server put
    /// on commands without payload (NBD_EOVERFLOW beyond it).
    public var maximumCacheByteCount: UInt64 { UInt64(maximumPayloadByteCount) }
}

/// A metadata context a client can select for NBD_CMD_BLOCK_STATUS.
public enum MetaContext: Hashable, Sendable {
    /// `base:allocation`: NBD_STATE_HOLE and NBD_STATE_ZERO.
    case baseAllocation
    /// `qemu:allocation-depth`: 0 unallocated, 1 in the store, 2 in the base.
    case allocationDepth
    /// `qemu:dirty-bitmap:NAME`, as qemu-nbd serves a bitmap: bit 0 (`dirtyState`) set where
    /// the chunk changed since checkpoint NAME. `id` is the one sent for it on this connection.
    case dirtyBitmap(checkpointName: String, id: UInt32)

    /// What a `qemu:dirty-bitmap:NAME` context's name starts with.
    public static let dirtyBitmapPrefix = "qemu:dirty-bitmap:"
    /// The status bit of a changed range in a dirty-bitmap context.
    public static let dirtyState: UInt32 = 1

    /// The context's name on the wire.
    public var name: String {
        switch self {
        case .baseAllocation: return "base:allocation"
        case .allocationDepth: return "qemu:allocation-depth"
        case .dirtyBitmap(let checkpointName, _): return Self.dirtyBitmapPrefix + checkpointName
        }
    }

    /// The id sent in `NBD_REP_META_CONTEXT` and in block status chunks.
    public var id: UInt32 {
        switch self {
        case .baseAllocation: return 1
        case .allocationDepth: return 2
        case .dirtyBitmap(_, let id): return id
        }
    }

    /// Every context `export` offers: the two fixed ones, then one a checkpoint, numbered
    /// from 3 in the export's order.
    public static func offered(by export: ExportDescription) -> [MetaContext] {
        [.baseAllocation, .allocationDepth]
            + export.dirtyBitmapNames.enumerated().map { position, name in
                .dirtyBitmap(checkpointName: name, id: 3 + UInt32(position))
            }
    }
}

/// What the client and server agreed on; fixed for the transmission phase.
public struct NegotiatedSession: Sendable {
    public var export: ExportDescription
    public var structuredReplies: Bool
    public var extendedHeaders: Bool
    public var metaContexts: [MetaContext]

    public init(
        export: ExportDescription, structuredReplies: Bool, extendedHeaders: Bool,
        metaContexts: [MetaContext]
    ) {
        self.export = export
        self.structuredReplies = structuredReplies
        self.extendedHeaders = extendedHeaders
        self.metaContexts = metaContexts
    }
}

/// What the server does after one client message.
public enum HandshakeAction: Equatable {
    /// Send these bytes and read the next option.
    case reply([UInt8])
    /// Send these bytes, then the transmission phase starts.
    case replyAndTransmit([UInt8])
    /// Send these bytes (possibly none), then close the connection.
    case replyAndClose([UInt8], reason: String)
    /// Send these bytes (the ACK to NBD_OPT_STARTTLS), then the TLS handshake: everything
    /// after it is encrypted.
    case replyAndStartTLS([UInt8])
}

/// Handshake state for one connection.
public struct Handshake {
    /// Longest option data accepted; a longer one ends the connection (a string is at most
    /// 4096 bytes, so GO and a handful of meta-context queries fit well inside).
    public static let maxOptionByteCount: UInt32 = 16 << 10
    /// Options accepted before the server gives up on a client that never chooses an export.
    public static let maxOptionCount = 256
    /// Longest string the protocol allows (names, descriptions, messages): a MUST of the spec.
    public static let maxStringByteCount = 4096

    public let exports: [ExportDescription]
    /// How this connection treats TLS; fixed for its life, as the spec requires.
    public let tlsMode: TLSMode
    /// Set once NBD_OPT_STARTTLS was acknowledged.
    public private(set) var isTLSInitiated = false
    public private(set) var clientFlags: ClientFlags = []
    public private(set) var structuredReplies = false
    public private(set) var extendedHeaders = false
    /// Contexts chosen by the last SET_META_CONTEXT, and the export name it named.
    public private(set) var selectedContexts: [MetaContext] = []
    public private(set) var selectedContextsExportName: String? = nil
    public private(set) var optionCount = 0
    /// Set once the handshake has chosen an export.
    public private(set) var session: NegotiatedSession? = nil

    /// The first export is also the default one (the empty name).
    public init(exports: [ExportDescription], tlsMode: TLSMode = .noTLS) {
        precondition(!exports.isEmpty, "a server offers at least one export")
        self.exports = exports
        self.tlsMode = tlsMode
    }

    /// The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags.
    public static func greeting() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(Magic.initPassword)
        bytes.appendBigEndian(Magic.option)
        bytes.appendBigEndian(HandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        return bytes
    }

    /// Takes the client's 32-bit flags; returns a reason to close if they are unacceptable.
    public mutating func receiveClientFlags(_ rawValue: UInt32) -> String? {
        let flags = ClientFlags(rawValue: rawValue)
        guard flags.subtracting([.fixedNewstyle, .noZeroes]).isEmpty else {
            return "unknown client flags 0x\(String(rawValue, radix: 16))"
        }
        guard flags.contains(.fixedNewstyle) else { return "client does not speak fixed newstyle" }
        clientFlags = flags
        return nil
    }

    /// Handles one option (its number and data, already read whole).
    public mutating func handle(option rawOption: UInt32, data: [UInt8]) -> HandshakeAction {
        optionCount += 1
        guard optionCount <= Self.maxOptionCount else {
            return .replyAndClose([], reason: "more than \(Self.maxOptionCount) options")
        }
        if let refusal = refusalUntilTLS(rawOption) { return refusal }
        guard let option = Option(rawValue: rawOption) else {
            return .reply(
                Self.reply(rawOption, .errUnsup, message: "option \(rawOption) is not supported"))
        }
        switch option {
        case .exportName:
            return exportName(data)
        case .abort:
            return .replyAndClose(
                Self.reply(rawOption, .ack), reason: "client aborted the handshake")
        case .list:
            return .reply(list(data))
        case .info, .go:
            return infoOrGo(option, data)
        case .structuredReply:
            return .reply(structuredReply(data))
        case .extendedHeaders:
            return .reply(extendedHeadersReply(data))
        case .listMetaContext, .setMetaContext:
            return .reply(metaContext(option, data))
        case .startTLS:
            return startTLS(data)
        case .peekExport:
            return .reply(
                Self.reply(rawOption, .errUnsup, message: "option \(rawOption) is not supported"))
        }
    }

    /// Finds an export by the name a client sent; the empty name is the default export.
    func export(named name: String) -> ExportDescription? {
        if name.isEmpty { return exports[0] }
        return exports.first { $0.name == name }
    }

    /// The flags an export is described with, given what was negotiated so far.
    func transmissionFlags(for export: ExportDescription) -> TransmissionFlags {
        var flags: TransmissionFlags = [.hasFlags, .sendFlush, .sendCache, .canMultiConn]
        if export.isReadOnly {
            flags.insert(.readOnly)
        } else {
            flags.formUnion([.sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero])
        }
        if structuredReplies { flags.insert(.sendDF) }
        return flags
    }

    /// Records the chosen export; the transmission phase follows.
    mutating func choose(_ export: ExportDescription, name: String) {
        let contextsApply = structuredReplies && selectedContextsExportName == name
        session = NegotiatedSession(
            export: export, structuredReplies: structuredReplies, extendedHeaders: extendedHeaders,
            metaContexts: contextsApply ? selectedContexts : [])
    }

    private mutating func exportName(_ data: [UInt8]) -> HandshakeAction {
        let name = String(decoding: data, as: UTF8.self)
        guard let export = export(named: name) else {
            // The protocol gives EXPORT_NAME no error reply: the only answer is to hang up.
            return .replyAndClose(
                [], reason: "unknown export '\(name)' requested with NBD_OPT_EXPORT_NAME")
        }
        choose(export, name: name)
        var bytes: [UInt8] = []
        bytes.appendBigEndian(export.byteCount)
        bytes.appendBigEndian(transmissionFlags(for: export).rawValue)
        if !clientFlags.contains(.noZeroes) { bytes += [UInt8](repeating: 0, count: 124) }
        return .replyAndTransmit(bytes)
    }

    private func list(_ data: [UInt8]) -> [UInt8] {
        guard data.isEmpty else {
            return Self.reply(
                Option.list.rawValue, .errInvalid, message: "NBD_OPT_LIST takes no data")
        }
        var bytes: [UInt8] = []
        for export in exports {
            var payload: [UInt8] = []
            payload.appendBigEndian(UInt32(export.name.utf8.count))
            payload += Array(export.name.utf8)
            payload += Array(export.description.utf8)
            bytes += Self.reply(Option.list.rawValue, .server, payload: payload)
        }
        return bytes + Self.reply(Option.list.rawValue, .ack)
    }

    private mutating func structuredReply(_ data: [UInt8]) -> [UInt8] {
        let option = Option.structuredReply.rawValue
        guard data.isEmpty else {
            return Self.reply(option, .errInvalid, message: "option takes no data")
        }
        if extendedHeaders {
            return Self.reply(
                option, .errExtendedHeaderRequired, message: "extended headers already negotiated")
        }
        if structuredReplies {
            return Self.reply(option, .errInvalid, message: "structured replies already negotiated")
        }
        structuredReplies = true
        return Self.reply(option, .ack)
    }

    private mutating func extendedHeadersReply(_ data: [UInt8]) -> [UInt8] {
        let option = Option.extendedHeaders.rawValue
        guard data.isEmpty else {
            return Self.reply(option, .errInvalid, message: "option takes no data")
        }
        if extendedHeaders {
            return Self.reply(option, .errInvalid, message: "extended headers already negotiated")
        }
        // Extended headers imply structured replies.
        extendedHeaders = true
        structuredReplies = true
        return Self.reply(option, .ack)
    }

    /// Marks TLS initiated (NBD_OPT_STARTTLS acknowledged) and forgets everything negotiated
    /// in plaintext, as the spec requires of STARTTLS: a man in the middle may have chosen it.
    mutating func beginTLS() {
        isTLSInitiated = true
        structuredReplies = false
        extendedHeaders = false
        setSelectedContexts([], exportName: nil)
    }

    mutating func setSelectedContexts(_ contexts: [MetaContext], exportName: String?) {
        selectedContexts = contexts
        selectedContextsExportName = exportName
    }

    /// An option reply: magic, option, type, length, payload.
    static func reply(_ option: UInt32, _ type: OptionReply, payload: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20 + payload.count)
        bytes.appendBigEndian(Magic.optionReply)
        bytes.appendBigEndian(option)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(UInt32(payload.count))
        bytes += payload
        return bytes
    }

    /// An error reply carrying a human-readable message.
    static func reply(_ option: UInt32, _ type: OptionReply, message: String) -> [UInt8] {
        reply(option, type, payload: Array(message.utf8.prefix(maxStringByteCount)))
    }
}
