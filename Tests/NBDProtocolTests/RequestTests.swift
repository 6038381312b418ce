import NBDProtocol
import Testing

private func session(readOnly: Bool = false, structured: Bool = true, contexts: [MetaContext] = [])
    -> NegotiatedSession
{
    NegotiatedSession(
        export: ExportDescription(
            name: "", description: "", byteCount: 1 << 20, isReadOnly: readOnly),
        structuredReplies: structured, extendedHeaders: false, metaContexts: contexts)
}

private func header(
    _ command: UInt16, flags: CommandFlags = [], offset: UInt64 = 0, length: UInt64 = 512
) -> RequestHeader {
    RequestHeader(flags: flags, type: command, cookie: 0xC00C1E, offset: offset, length: length)
}

@Test func compactHeaderParsesTheSpecsLayout() throws {
    let bytes: [UInt8] =
        [0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01] + [0, 0, 0, 0, 0, 0, 0, 42] + [
            0, 0, 0, 0, 0, 0, 0x10, 0,
        ]
        + [0, 0, 0x02, 0]
    let parsed = try bytes.withUnsafeBytes { try RequestHeader(parsing: $0, extended: false) }
    #expect(parsed == RequestHeader(flags: .fua, type: 1, cookie: 42, offset: 4096, length: 512))
    #expect(parsed.encoded(extended: false) == bytes)
}

@Test func extendedHeaderCarriesA64BitLength() throws {
    let original = RequestHeader(flags: [], type: 6, cookie: 7, offset: 1 << 40, length: 1 << 33)
    let bytes = original.encoded(extended: true)
    #expect(bytes.count == 32 && Array(bytes[0..<4]) == [0x21, 0xe4, 0x1c, 0x71])
    #expect(
        try bytes.withUnsafeBytes { try RequestHeader(parsing: $0, extended: true) } == original)
}

@Test func badMagicIsAProtocolViolation() {
    var bytes = header(0).encoded(extended: false)
    bytes[0] ^= 0xFF
    #expect(throws: ProtocolViolation.self) {
        try bytes.withUnsafeBytes { try RequestHeader(parsing: $0, extended: false) }
    }
    let compact = header(0).encoded(extended: false) + [0, 0, 0, 0]
    #expect(throws: ProtocolViolation.self) {
        try compact.withUnsafeBytes { try RequestHeader(parsing: $0, extended: true) }
    }
}

@Test func requestsPastTheEndAreRefusedWithTheSpecsErrors() {
    let end = header(0, offset: (1 << 20) - 100, length: 101)
    #expect(
        session().validate(end)
            == .failure(
                RequestRejection(
                    error: .invalid,
                    message: "101 bytes at 1048476 lie beyond the export (1048576 bytes)")))
    guard case .failure(let write) = session().validate(header(1, offset: 1 << 20, length: 1))
    else { return }
    #expect(write.error == .noSpace)
    guard case .failure(let overflow) = session().validate(header(0, offset: UInt64.max, length: 2))
    else { return }
    #expect(overflow.error == .invalid)
    #expect((try? session().validate(header(0, offset: (1 << 20) - 1, length: 1)).get()) != nil)
}

@Test func writesToAReadOnlyExportAreRefusedWithEPERM() {
    for command: UInt16 in [1, 4, 6] {
        guard case .failure(let rejection) = session(readOnly: true).validate(header(command))
        else {
            Issue.record("command \(command) accepted on a read-only export")
            continue
        }
        #expect(rejection.error == .perm)
    }
    #expect((try? session(readOnly: true).validate(header(0)).get()) != nil)
}

@Test func flagsAreCheckedPerCommand() {
    #expect((try? session().validate(header(6, flags: [.noHole, .fastZero, .fua])).get()) != nil)
    #expect((try? session().validate(header(0, flags: .dontFragment)).get()) != nil)
    #expect(
        (try? session(structured: false).validate(header(0, flags: .dontFragment)).get()) == nil)
    #expect((try? session().validate(header(1, flags: .noHole)).get()) == nil)
    #expect((try? session().validate(header(0, flags: CommandFlags(rawValue: 0x80))).get()) == nil)
    #expect((try? session().validate(header(99)).get()) == nil)
}

@Test func blockStatusNeedsANegotiatedContext() {
    #expect((try? session().validate(header(7)).get()) == nil)
    #expect(
        (try? session(contexts: [.baseAllocation]).validate(header(7, flags: .requestOne)).get())
            != nil)
}

@Test func replyHeadersMatchTheSpecsLayouts() {
    var buffer = [UInt8](repeating: 0, count: 64)
    let simple = buffer.withUnsafeMutableBytes {
        Reply.encodeSimple(error: 22, cookie: 9, into: $0)
    }
    #expect(
        Array(buffer[..<simple]) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9])
    let chunk = buffer.withUnsafeMutableBytes {
        Reply.encodeChunk(
            flags: 1, type: .offsetData, cookie: 9, requestOffset: 5, payloadByteCount: 520,
            extended: false, into: $0)
    }
    #expect(
        Array(buffer[..<chunk]) == [
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 2, 8,
        ])
    let extended = buffer.withUnsafeMutableBytes {
        Reply.encodeChunk(
            flags: 1, type: .none, cookie: 9, requestOffset: 5, payloadByteCount: 0, extended: true,
            into: $0)
    }
    #expect(
        Array(buffer[..<extended]) == [0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 0] + [
            0, 0, 0, 0, 0, 0, 0, 9,
        ] + [0, 0, 0, 0, 0, 0, 0, 5] + [UInt8](repeating: 0, count: 8))
}

private func extendedSession(contexts: [MetaContext] = [.baseAllocation]) -> NegotiatedSession {
    NegotiatedSession(
        export: ExportDescription(
            name: "", description: "", byteCount: 1 << 40, isReadOnly: false),
        structuredReplies: true, extendedHeaders: true, metaContexts: contexts)
}

@Test func payloadLengthFlagMakesTheLengthAPayloadOnlyWithExtendedHeaders() {
    let blockStatus = header(7, flags: .payloadLength, length: 40)
    #expect(blockStatus.payloadByteCount(extended: true) == 40)
    #expect(blockStatus.payloadByteCount(extended: false) == 0)
    #expect(header(1, length: 512).payloadByteCount(extended: false) == 512)
    #expect(header(1, length: 512).payloadByteCount(extended: true) == 512)
    #expect(header(0, length: 512).payloadByteCount(extended: true) == 0)
}

@Test func payloadLengthFlagIsAcceptedOnWritesWithExtendedHeadersOnly() {
    let write = header(1, flags: [.payloadLength, .fua], length: 512)
    #expect((try? extendedSession().validate(write).get()) != nil)
    guard case .failure(let compact) = session().validate(write) else {
        Issue.record("PAYLOAD_LEN accepted without extended headers")
        return
    }
    #expect(compact.error == .invalid)
    // No other command takes a payload: the server reads it and refuses the request.
    for command: UInt16 in [0, 3, 4, 5, 6, 7] {
        let withPayload = header(command, flags: .payloadLength, length: 16)
        guard case .failure(let rejection) = extendedSession().validate(withPayload) else {
            Issue.record("command \(command) with a payload accepted")
            continue
        }
        #expect(rejection.error == .invalid)
    }
}

@Test func flushIgnoresItsReservedOffsetAndLength() throws {
    let flush = try session().validate(header(3, offset: 1 << 62, length: 77)).get()
    #expect(flush.command == .flush && flush.offset == 0 && flush.length == 0)
    #expect(flush.cookie == 0xC00C1E)
}

@Test func cacheLongerThanTheMaximumPayloadIsRefusedWithEOVERFLOW() {
    let limit = extendedSession().export.maximumCacheByteCount
    #expect(limit == 32 << 20)
    #expect((try? extendedSession().validate(header(5, length: limit)).get()) != nil)
    guard case .failure(let rejection) = extendedSession().validate(header(5, length: limit + 1))
    else {
        Issue.record("a cache over the limit was accepted")
        return
    }
    #expect(rejection.error == .overflow)
}
