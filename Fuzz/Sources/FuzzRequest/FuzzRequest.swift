// Fuzz target: transmission-phase request headers, parsed and validated as `NBDServer` does,
// against a session the input chooses. A validated request must lie inside the export, and a
// read must fit the payload buffer. The replies the server would send are encoded and parsed
// back, and each payload is also parsed as a reply chunk payload (error chunk, block status),
// as a client would. Input: byte 0 session bits (extended headers, structured replies,
// read-only, a metadata context), bytes 1..<9 the export size (little-endian), then request
// headers, each followed by its payload.

import FuzzSupport
import NBDProtocol

let maximumPayloadByteCount: UInt32 = 32 << 20

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: byteCount)
    guard bytes.count >= 9 else { return 0 }
    let bits = bytes[0]
    let extended = bits & 1 != 0
    var exportByteCount: UInt64 = 0
    for index in (1..<9).reversed() {
        exportByteCount = exportByteCount << 8 | UInt64(bytes[index])
    }
    let session = NegotiatedSession(
        export: ExportDescription(
            name: "disk", description: "", byteCount: exportByteCount,
            isReadOnly: bits & 4 != 0, maximumPayloadByteCount: maximumPayloadByteCount),
        structuredReplies: extended || bits & 2 != 0, extendedHeaders: extended,
        metaContexts: bits & 8 != 0 ? [.baseAllocation] : [])
    let headerByteCount =
        extended ? RequestHeader.extendedByteCount : RequestHeader.compactByteCount
    var position = 9
    while position + headerByteCount <= bytes.count {
        let headerBytes = UnsafeRawBufferPointer(
            rebasing: bytes[position..<(position + headerByteCount)])
        guard let header = try? RequestHeader(parsing: headerBytes, extended: extended) else {
            return 0  // the server ends the connection
        }
        checkRoundTrip(header, extended: extended)
        position += headerByteCount
        let payloadByteCount = header.payloadByteCount(extended: extended)
        guard payloadByteCount <= UInt64(maximumPayloadByteCount) else { return 0 }
        let payloadEnd = position + min(Int(payloadByteCount), bytes.count - position)
        checkReplyPayloadParsers(UnsafeRawBufferPointer(rebasing: bytes[position..<payloadEnd]))
        position = payloadEnd
        if header.type == Command.disconnect.rawValue { return 0 }
        let request: Request
        switch session.validate(header) {
        case .success(let valid): request = valid
        case .failure(let rejection):
            checkErrorReply(
                rejection, cookie: header.cookie, offset: header.offset, extended: extended)
            continue
        }
        precondition(request.offset <= exportByteCount, "request starts past the export")
        precondition(request.length <= exportByteCount - request.offset, "request ends past it")
        if request.command == .read || request.command == .write {
            precondition(
                request.length <= UInt64(maximumPayloadByteCount), "payload exceeds the buffer")
        }
        if request.command == .read && request.length > 0 {
            checkReadReply(request, extended: extended)
        }
        if request.command == .blockStatus && request.length > 0 {
            checkBlockStatusPayload(request, extended: extended)
        }
    }
    return 0
}

/// Parsers a client runs on reply payloads never crash, and what they accept survives
/// encoding.
func checkReplyPayloadParsers(_ payload: UnsafeRawBufferPointer) {
    if let error = try? ErrorChunkPayload(parsing: payload),
        payload.count <= ErrorChunkPayload.maxByteCount
    {
        var again = [UInt8](repeating: 0, count: ErrorChunkPayload.maxByteCount)
        let count = again.withUnsafeMutableBytes { error.encode(into: $0) }
        let reparsed = again[..<count].withUnsafeBytes { try? ErrorChunkPayload(parsing: $0) }
        precondition(reparsed?.error == error.error, "error chunk does not survive encoding")
    }
    for extended in [false, true] {
        guard let prefix = try? BlockStatusPrefix(parsing: payload, extended: extended) else {
            continue
        }
        var position = BlockStatusPrefix.byteCount(extended: extended)
        for _ in 0..<prefix.descriptorCount {
            let rest = UnsafeRawBufferPointer(rebasing: payload[position...])
            guard (try? BlockStatusDescriptor(parsing: rest, extended: extended)) != nil else {
                break
            }
            position += BlockStatusDescriptor.byteCount(extended: extended)
        }
    }
    if let prefix = try? OffsetDataPrefix(parsing: payload) {
        precondition(prefix.offset == payload.loadUnaligned(as: UInt64.self).bigEndian)
    }
}

/// The error chunk for a refused request parses back to its error and a prefix of its message.
func checkErrorReply(_ rejection: RequestRejection, cookie: UInt64, offset: UInt64, extended: Bool)
{
    var buffer = [UInt8](repeating: 0, count: Reply.headerBufferByteCount)
    let count = buffer.withUnsafeMutableBytes {
        Reply.encodeErrorChunk(
            ErrorChunkPayload(error: rejection.error.rawValue, message: rejection.message),
            cookie: cookie, requestOffset: offset, extended: extended, into: $0)
    }
    let headerByteCount = Reply.chunkHeaderByteCount(extended: extended)
    guard
        let header = try? buffer[..<headerByteCount].withUnsafeBytes({
            try ReplyChunkHeader(parsing: $0, extended: extended)
        }),
        let payload = try? buffer[headerByteCount..<count].withUnsafeBytes({
            try ErrorChunkPayload(parsing: $0)
        })
    else { preconditionFailure("an encoded error chunk does not parse") }
    precondition(header.cookie == cookie && header.type == ReplyType.error.rawValue)
    precondition(header.payloadByteCount == UInt64(count - headerByteCount))
    precondition(payload.error == rejection.error.rawValue, "error value changed")
    precondition(rejection.message.utf8.starts(with: payload.message.utf8), "message changed")
}

/// A read's chunk header and data offset parse back to the request.
func checkReadReply(_ request: Request, extended: Bool) {
    var buffer = [UInt8](repeating: 0, count: Reply.maxHeaderByteCount)
    let count = buffer.withUnsafeMutableBytes {
        Reply.encodeReadChunkHeader(
            cookie: request.cookie, offset: request.offset, dataByteCount: Int(request.length),
            extended: extended, into: $0)
    }
    let headerByteCount = Reply.chunkHeaderByteCount(extended: extended)
    precondition(count == headerByteCount + OffsetDataPrefix.byteCount, "read chunk header size")
    let header = try? buffer[..<headerByteCount].withUnsafeBytes {
        try ReplyChunkHeader(parsing: $0, extended: extended)
    }
    let prefix = try? buffer[headerByteCount..<count].withUnsafeBytes {
        try OffsetDataPrefix(parsing: $0)
    }
    precondition(header?.payloadByteCount == 8 + request.length, "read chunk length")
    precondition(prefix?.offset == request.offset, "read chunk offset")
}

/// A block status payload describing the request's range in up to three extents parses back.
func checkBlockStatusPayload(_ request: Request, extended: Bool) {
    let limit = extended ? request.length : min(request.length, UInt64(UInt32.max))
    let first = max(1, limit / 3)
    let lengths = first < limit ? [first, limit - first] : [limit]
    var buffer = [UInt8](
        repeating: 0,
        count: BlockStatusPrefix.payloadByteCount(
            descriptorCount: lengths.count, extended: extended))
    buffer.withUnsafeMutableBytes { payload in
        var used = BlockStatusPrefix(contextID: 1, descriptorCount: UInt32(lengths.count))
            .encode(into: payload, extended: extended)
        for (index, length) in lengths.enumerated() {
            used += BlockStatusDescriptor(byteCount: length, status: UInt32(index))
                .encode(into: payload, at: used, extended: extended)
        }
        precondition(used == payload.count, "block status payload size")
    }
    let prefix = try? buffer.withUnsafeBytes {
        try BlockStatusPrefix(parsing: $0, extended: extended)
    }
    precondition(prefix?.descriptorCount == UInt32(lengths.count), "block status count")
}

/// Encoding a parsed header gives back the same header.
func checkRoundTrip(_ header: RequestHeader, extended: Bool) {
    let encoded = header.encoded(extended: extended)
    let again = encoded.withUnsafeBytes { try? RequestHeader(parsing: $0, extended: extended) }
    precondition(again == header, "header does not survive encoding")
}

@_cdecl("FuzzRequest_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
