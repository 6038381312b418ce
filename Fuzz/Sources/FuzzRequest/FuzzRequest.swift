// Fuzz target: transmission-phase request headers, parsed and validated as `NBDServer` does,
// against a session the input chooses. A validated request must lie inside the export, and a
// read must fit the payload buffer. Input: byte 0 session bits (extended headers, structured
// replies, read-only, a metadata context), bytes 1..<9 the export size (little-endian), then
// request headers, each followed by its write payload.

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
        metaContexts: bits & 8 != 0 ? [.baseAllocation] : [], transmissionFlags: [.hasFlags])
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
        let payloadByteCount = header.payloadByteCount
        guard payloadByteCount <= UInt64(maximumPayloadByteCount) else { return 0 }
        position += min(Int(payloadByteCount), bytes.count - position)
        if header.type == Command.disconnect.rawValue { return 0 }
        guard case .success(let request) = session.validate(header),
            request.command != .flush  // its offset and length are reserved, and ignored
        else { continue }
        precondition(request.offset <= exportByteCount, "request starts past the export")
        precondition(request.length <= exportByteCount - request.offset, "request ends past it")
        if request.command == .read || request.command == .write {
            precondition(
                request.length <= UInt64(maximumPayloadByteCount), "payload exceeds the buffer")
        }
    }
    return 0
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
