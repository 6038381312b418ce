// NBD_OPT_STARTTLS in the handshake state machine: the spec's NOTLS, SELECTIVETLS and FORCEDTLS
// replies, and that nothing negotiated before the upgrade survives it (CVE-2021-3716 class).

import NBDProtocol
import Testing

private let disk = ExportDescription(
    name: "disk", description: "a test disk", byteCount: 1 << 30, isReadOnly: false)

/// The reply types (`NBD_REP_*`) in a stream of option replies.
private func replyTypes(_ action: HandshakeAction) -> [UInt32] {
    let bytes: [UInt8]
    switch action {
    case .reply(let replies), .replyAndTransmit(let replies), .replyAndStartTLS(let replies):
        bytes = replies
    case .replyAndClose(let replies, _):
        bytes = replies
    }
    var reader = ByteReader(bytes)
    var types: [UInt32] = []
    while reader.remainingByteCount > 0 {
        guard reader.read(UInt64.self) == 0x0003_e889_0455_65a9, reader.read(UInt32.self) != nil,
            let type = reader.read(UInt32.self), let length = reader.read(UInt32.self),
            reader.read(byteCount: Int(length)) != nil
        else {
            Issue.record("malformed reply stream")
            return types
        }
        types.append(type)
    }
    return types
}

private func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendBigEndian(value)
    return bytes
}

private func goData(name: String) -> [UInt8] {
    bigEndian(UInt32(name.utf8.count)) + Array(name.utf8) + bigEndian(UInt16(0))
}

private func setMetaContextData(name: String, query: String) -> [UInt8] {
    bigEndian(UInt32(name.utf8.count)) + Array(name.utf8) + bigEndian(UInt32(1))
        + bigEndian(UInt32(query.utf8.count)) + Array(query.utf8)
}

private let ack: UInt32 = 1
private let errUnsup: UInt32 = 0x8000_0001
private let errInvalid: UInt32 = 0x8000_0003
private let errTLSRequired: UInt32 = 0x8000_0005

@Test func withoutTLSStartTLSIsUnsupportedAndTLSIsNeverRequired() {
    var handshake = Handshake(exports: [disk])
    #expect(replyTypes(handshake.handle(option: 5, data: [])) == [errUnsup])
    #expect(!handshake.isTLSInitiated)
    guard case .replyAndTransmit = handshake.handle(option: 7, data: goData(name: "disk")) else {
        Issue.record("GO must succeed without TLS when TLS is off")
        return
    }
}

@Test func forcedTLSRefusesEveryOptionButStartTLSAndAbortUntilTheUpgrade() {
    var handshake = Handshake(exports: [disk], tlsMode: .forced)
    // INFO, GO, LIST, STRUCTURED_REPLY, SET_META_CONTEXT, EXTENDED_HEADERS, and an unknown one.
    for option: UInt32 in [6, 7, 3, 8, 10, 11, 0x1234] {
        let data = option == 6 || option == 7 ? goData(name: "disk") : []
        let action = handshake.handle(option: option, data: data)
        guard case .reply = action else {
            Issue.record("option \(option): expected a reply, got \(action)")
            continue
        }
        #expect(replyTypes(action) == [errTLSRequired], "option \(option)")
    }
    #expect(handshake.session == nil && !handshake.structuredReplies)
    guard case .replyAndClose = handshake.handle(option: 1, data: Array("disk".utf8)) else {
        Issue.record("EXPORT_NAME before STARTTLS must end the session")
        return
    }
}

@Test func forcedTLSServesOptionsOnceInitiatedAndRefusesASecondStartTLS() {
    var handshake = Handshake(exports: [disk], tlsMode: .forced)
    #expect(replyTypes(handshake.handle(option: 5, data: [1])) == [errInvalid])
    let upgrade = handshake.handle(option: 5, data: [])
    guard case .replyAndStartTLS = upgrade else {
        Issue.record("STARTTLS must be acknowledged, got \(upgrade)")
        return
    }
    #expect(replyTypes(upgrade) == [ack] && handshake.isTLSInitiated)
    #expect(replyTypes(handshake.handle(option: 5, data: [])) == [errInvalid])
    #expect(replyTypes(handshake.handle(option: 8, data: [])) == [ack])
    guard case .replyAndTransmit = handshake.handle(option: 7, data: goData(name: "disk")) else {
        Issue.record("GO after STARTTLS must enter transmission")
        return
    }
    #expect(handshake.session?.structuredReplies == true)
}

@Test func abortIsAcceptedBeforeTheUpgradeUnderForcedTLS() {
    var handshake = Handshake(exports: [disk], tlsMode: .forced)
    guard case .replyAndClose(_, _) = handshake.handle(option: 2, data: []) else {
        Issue.record("ABORT must be acknowledged and close")
        return
    }
}

@Test func selectiveTLSServesOptionsWithoutTheUpgradeAndAllowsIt() {
    var handshake = Handshake(exports: [disk], tlsMode: .selective)
    #expect(replyTypes(handshake.handle(option: 3, data: [])).last == ack)
    guard case .replyAndStartTLS = handshake.handle(option: 5, data: []) else {
        Issue.record("STARTTLS must be acknowledged")
        return
    }
    guard case .replyAndTransmit = handshake.handle(option: 7, data: goData(name: "disk")) else {
        Issue.record("GO after STARTTLS must enter transmission")
        return
    }
}

/// CVE-2021-3716 (nbdkit): structured replies negotiated in plaintext survived STARTTLS, so a
/// man in the middle could change how the encrypted session's replies are framed.
@Test(arguments: [TLSMode.selective, .forced])
func nothingNegotiatedBeforeStartTLSSurvivesIt(mode: TLSMode) {
    var handshake = Handshake(exports: [disk], tlsMode: mode)
    if mode == .selective {
        #expect(replyTypes(handshake.handle(option: 11, data: [])) == [ack])
        #expect(
            replyTypes(
                handshake.handle(
                    option: 10, data: setMetaContextData(name: "disk", query: "base:allocation"))
            ).last == ack)
        #expect(handshake.extendedHeaders && handshake.structuredReplies)
        #expect(handshake.selectedContexts == [.baseAllocation])
    }
    guard case .replyAndStartTLS = handshake.handle(option: 5, data: []) else {
        Issue.record("STARTTLS must be acknowledged")
        return
    }
    #expect(!handshake.structuredReplies && !handshake.extendedHeaders)
    #expect(handshake.selectedContexts.isEmpty && handshake.selectedContextsExportName == nil)
    guard case .replyAndTransmit = handshake.handle(option: 7, data: goData(name: "disk")) else {
        Issue.record("GO after STARTTLS must enter transmission")
        return
    }
    #expect(handshake.session?.structuredReplies == false)
    #expect(handshake.session?.extendedHeaders == false)
    #expect(handshake.session?.metaContexts.isEmpty == true)
}
