import NBDProtocol
import Testing

private let disk = ExportDescription(
    name: "disk", description: "a test disk", byteCount: 1 << 30, isReadOnly: false,
    preferredBlockByteCount: 4096)

private func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendBigEndian(value)
    return bytes
}

/// Splits option replies into (option, type, payload) triples; fails on malformed framing.
private func parseReplies(_ bytes: [UInt8]) -> [(option: UInt32, type: UInt32, payload: [UInt8])] {
    var reader = ByteReader(bytes)
    var replies: [(UInt32, UInt32, [UInt8])] = []
    while reader.remainingByteCount > 0 {
        guard reader.read(UInt64.self) == 0x0003_e889_0455_65a9,
            let option = reader.read(UInt32.self),
            let type = reader.read(UInt32.self), let length = reader.read(UInt32.self),
            let payload = reader.read(byteCount: Int(length))
        else {
            Issue.record("malformed reply stream")
            return []
        }
        replies.append((option, type, Array(payload)))
    }
    return replies
}

private func goData(name: String, requests: [UInt16]) -> [UInt8] {
    bigEndian(UInt32(name.utf8.count)) + Array(name.utf8) + bigEndian(UInt16(requests.count))
        + requests.flatMap { bigEndian($0) }
}

@Test func greetingIsTheSpecsEighteenBytes() {
    #expect(
        Handshake.greeting() == Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0x00, 0x03])
}

@Test func clientFlagsOutsideTheSpecEndTheHandshake() {
    var handshake = Handshake(exports: [disk])
    #expect(handshake.receiveClientFlags(0x4) != nil)
    #expect(handshake.receiveClientFlags(0x0) != nil)
    #expect(handshake.receiveClientFlags(0x3) == nil)
}

@Test func unknownOptionGetsErrUnsupAndTheHandshakeContinues() {
    var handshake = Handshake(exports: [disk])
    guard case .reply(let bytes) = handshake.handle(option: 0x1234, data: [1, 2, 3]) else {
        Issue.record("expected a reply")
        return
    }
    let replies = parseReplies(bytes)
    #expect(replies.count == 1 && replies[0].option == 0x1234 && replies[0].type == 0x8000_0001)
    guard
        case .replyAndTransmit = handshake.handle(
            option: 7, data: goData(name: "disk", requests: []))
    else {
        Issue.record("GO after an unknown option must still work")
        return
    }
}

@Test func goAnswersExportNameDescriptionAndBlockSizeThenAck() {
    var handshake = Handshake(exports: [disk])
    _ = handshake.handle(option: 8, data: [])
    guard
        case .replyAndTransmit(let bytes) = handshake.handle(
            option: 7, data: goData(name: "disk", requests: [1, 2, 3]))
    else {
        Issue.record("expected transmission")
        return
    }
    let replies = parseReplies(bytes)
    #expect(replies.last?.type == 1)  // ACK
    let infos = replies.filter { $0.type == 3 }.map(\.payload)
    let export = infos.first { $0.starts(with: [0, 0]) }
    // size 1 GiB, flags: HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|DF|MULTI_CONN|CACHE|FAST_ZERO
    #expect(export == [0, 0] + bigEndian(UInt64(1 << 30)) + bigEndian(UInt16(0x0DED)))
    #expect(infos.contains([0, 1] + Array("disk".utf8)))
    #expect(infos.contains([0, 2] + Array("a test disk".utf8)))
    #expect(
        infos.contains(
            [0, 3] + bigEndian(UInt32(1)) + bigEndian(UInt32(4096)) + bigEndian(UInt32(32 << 20))))
    #expect(handshake.session?.structuredReplies == true)
}

@Test func goForAnUnknownExportIsRefusedAndTheHandshakeGoesOn() {
    var handshake = Handshake(exports: [disk])
    guard
        case .reply(let bytes) = handshake.handle(
            option: 7, data: goData(name: "other", requests: []))
    else {
        Issue.record("expected an error reply")
        return
    }
    #expect(parseReplies(bytes).map(\.type) == [0x8000_0006])
    #expect(handshake.session == nil)
}

@Test func emptyNameSelectsTheDefaultExport() {
    var handshake = Handshake(exports: [disk])
    guard case .replyAndTransmit = handshake.handle(option: 7, data: goData(name: "", requests: []))
    else {
        Issue.record("the empty name must select the default export")
        return
    }
    #expect(handshake.session?.export.name == "disk")
}

@Test func malformedGoIsInvalidForEveryTruncation() {
    let data = goData(name: "disk", requests: [3])
    for length in 0..<data.count {
        var handshake = Handshake(exports: [disk])
        guard case .reply(let bytes) = handshake.handle(option: 7, data: Array(data[..<length]))
        else {
            Issue.record("length \(length): expected an error reply")
            continue
        }
        #expect(parseReplies(bytes).map(\.type) == [0x8000_0003], "length \(length)")
    }
}

@Test func exportNameWithoutNoZeroesPadsWith124Zeros() {
    var handshake = Handshake(exports: [disk])
    _ = handshake.receiveClientFlags(1)
    guard case .replyAndTransmit(let bytes) = handshake.handle(option: 1, data: Array("disk".utf8))
    else {
        Issue.record("expected transmission")
        return
    }
    #expect(bytes.count == 8 + 2 + 124)
    #expect(Array(bytes[0..<8]) == bigEndian(UInt64(1 << 30)))
    var quiet = Handshake(exports: [disk])
    _ = quiet.receiveClientFlags(3)
    guard case .replyAndTransmit(let short) = quiet.handle(option: 1, data: Array("disk".utf8))
    else { return }
    #expect(short.count == 10)
}

@Test func exportNameForAnUnknownExportHangsUp() {
    var handshake = Handshake(exports: [disk])
    guard case .replyAndClose(let bytes, _) = handshake.handle(option: 1, data: Array("nope".utf8))
    else {
        Issue.record("expected the connection to close")
        return
    }
    #expect(bytes.isEmpty)
}

@Test func listNamesEveryExportThenAcks() {
    var handshake = Handshake(exports: [disk])
    guard case .reply(let bytes) = handshake.handle(option: 3, data: []) else { return }
    let replies = parseReplies(bytes)
    #expect(replies.map(\.type) == [2, 1])
    #expect(
        replies[0].payload == bigEndian(UInt32(4)) + Array("disk".utf8) + Array("a test disk".utf8))
    guard case .reply(let invalid) = handshake.handle(option: 3, data: [0]) else { return }
    #expect(parseReplies(invalid).map(\.type) == [0x8000_0003])
}

@Test func abortIsAcknowledgedThenTheConnectionCloses() {
    var handshake = Handshake(exports: [disk])
    guard case .replyAndClose(let bytes, _) = handshake.handle(option: 2, data: []) else {
        Issue.record("expected close")
        return
    }
    #expect(parseReplies(bytes).map(\.type) == [1])
}

private func metaData(name: String, queries: [String]) -> [UInt8] {
    bigEndian(UInt32(name.utf8.count)) + Array(name.utf8) + bigEndian(UInt32(queries.count))
        + queries.flatMap { bigEndian(UInt32($0.utf8.count)) + Array($0.utf8) }
}

@Test func metaContextsNeedStructuredRepliesFirst() {
    var handshake = Handshake(exports: [disk])
    guard
        case .reply(let bytes) = handshake.handle(
            option: 10, data: metaData(name: "disk", queries: ["base:allocation"]))
    else { return }
    #expect(parseReplies(bytes).map(\.type) == [0x8000_0003])
}

@Test func setMetaContextSelectsExactNamesAndIgnoresOtherNamespaces() {
    var handshake = Handshake(exports: [disk])
    _ = handshake.handle(option: 8, data: [])
    let queries = ["base:allocation", "x-other:thing", "base:", "qemu:allocation-depth"]
    guard
        case .reply(let bytes) = handshake.handle(
            option: 10, data: metaData(name: "disk", queries: queries))
    else {
        return
    }
    let replies = parseReplies(bytes)
    #expect(replies.map(\.type) == [4, 4, 1])
    #expect(replies[0].payload == bigEndian(UInt32(1)) + Array("base:allocation".utf8))
    #expect(replies[1].payload == bigEndian(UInt32(2)) + Array("qemu:allocation-depth".utf8))
    _ = handshake.handle(option: 7, data: goData(name: "disk", requests: []))
    #expect(handshake.session?.metaContexts == [.baseAllocation, .allocationDepth])
}

@Test func contextsChosenForAnotherNameDoNotCarryOver() {
    var handshake = Handshake(exports: [disk])
    _ = handshake.handle(option: 8, data: [])
    _ = handshake.handle(option: 10, data: metaData(name: "", queries: ["base:allocation"]))
    _ = handshake.handle(option: 7, data: goData(name: "disk", requests: []))
    #expect(handshake.session?.metaContexts == [])
}

@Test func listMetaContextWithWildcardAndWithNoQuery() {
    var handshake = Handshake(exports: [disk])
    _ = handshake.handle(option: 8, data: [])
    guard
        case .reply(let all) = handshake.handle(
            option: 9, data: metaData(name: "disk", queries: [])),
        case .reply(let base) = handshake.handle(
            option: 9, data: metaData(name: "disk", queries: ["base:"]))
    else { return }
    #expect(parseReplies(all).map(\.type) == [4, 4, 1])
    #expect(
        parseReplies(base).map(\.payload) == [[0, 0, 0, 0] + Array("base:allocation".utf8), []])
}

@Test func extendedHeadersImplyStructuredRepliesAndRefuseRepeats() {
    var handshake = Handshake(exports: [disk])
    guard case .reply(let first) = handshake.handle(option: 11, data: []),
        case .reply(let again) = handshake.handle(option: 11, data: []),
        case .reply(let structured) = handshake.handle(option: 8, data: [])
    else { return }
    #expect(parseReplies(first).map(\.type) == [1])
    #expect(parseReplies(again).map(\.type) == [0x8000_0003])
    #expect(parseReplies(structured).map(\.type) == [0x8000_000a])
    _ = handshake.handle(option: 7, data: goData(name: "disk", requests: []))
    #expect(
        handshake.session?.extendedHeaders == true && handshake.session?.structuredReplies == true)
}

@Test func aClientThatNeverChoosesIsCutOff() {
    var handshake = Handshake(exports: [disk])
    for _ in 0..<Handshake.maxOptionCount { _ = handshake.handle(option: 0x99, data: []) }
    guard case .replyAndClose = handshake.handle(option: 0x99, data: []) else {
        Issue.record("expected the connection to close")
        return
    }
}
