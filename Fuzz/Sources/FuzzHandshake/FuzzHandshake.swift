// Fuzz target: the option phase of the handshake, read as `NBDServer` reads it (client flags
// and option headers parsed by `ClientFlags(parsing:)` and `OptionHeader(parsing:)`, then
// the option's data), fed to `Handshake` under each TLS mode (after an acknowledged STARTTLS the
// rest of the input stands for what the client sends inside TLS). Input: the bytes a client
// sends after the greeting.

import FuzzSupport
import NBDProtocol

let exports = [
    ExportDescription(name: "disk", description: "fuzz", byteCount: 1 << 30, isReadOnly: false)
]

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: byteCount)
    for tlsMode in [TLSMode.noTLS, .selective, .forced] {
        runHandshake(bytes, tlsMode: tlsMode)
    }
    return 0
}

/// Feeds `bytes` to one handshake, as a connection under `tlsMode` reads them.
func runHandshake(_ bytes: UnsafeRawBufferPointer, tlsMode: TLSMode) {
    var handshake = Handshake(exports: exports, tlsMode: tlsMode)
    guard bytes.count >= ClientFlags.byteCount else { return }
    let flags = ClientFlags(
        parsing: UnsafeRawBufferPointer(rebasing: bytes[..<ClientFlags.byteCount]))
    guard handshake.receiveClientFlags(flags.rawValue) == nil else { return }
    var position = ClientFlags.byteCount
    while position + OptionHeader.byteCount <= bytes.count {
        let headerBytes = UnsafeRawBufferPointer(
            rebasing: bytes[position..<(position + OptionHeader.byteCount)])
        guard let header = try? OptionHeader(parsing: headerBytes) else {
            return  // the server ends the connection
        }
        checkRoundTrip(header)
        position += OptionHeader.byteCount
        let dataByteCount = Int(header.dataByteCount)
        guard position + dataByteCount <= bytes.count else { return }
        let optionData = Array(bytes[position..<(position + dataByteCount)])
        position += dataByteCount
        switch handshake.handle(option: header.option, data: optionData) {
        case .reply(let replyBytes):
            checkReplies(replyBytes, option: header.option)
        case .replyAndTransmit(let replyBytes):
            precondition(handshake.session != nil, "transmission without a session")
            precondition(
                tlsMode != .forced || handshake.isTLSInitiated,
                "data served before TLS under FORCEDTLS")
            if header.option != Option.exportName.rawValue {
                checkReplies(replyBytes, option: header.option)
            }
            return
        case .replyAndStartTLS(let replyBytes):
            precondition(tlsMode != .noTLS, "STARTTLS acknowledged without TLS")
            checkReplies(replyBytes, option: header.option)
        case .replyAndClose:
            return
        }
    }
}

/// Encoding a parsed option header gives back the same header.
func checkRoundTrip(_ header: OptionHeader) {
    var encoded = [UInt8](repeating: 0, count: OptionHeader.byteCount)
    encoded.withUnsafeMutableBytes { _ = header.encode(into: $0) }
    let again = encoded.withUnsafeBytes { try? OptionHeader(parsing: $0) }
    precondition(again == header, "option header does not survive encoding")
}

/// Every reply is whole option-reply frames for the option asked, with bounded payloads.
func checkReplies(_ bytes: [UInt8], option: UInt32) {
    var reader = ByteReader(bytes)
    while reader.remainingByteCount > 0 {
        guard let magic = reader.read(UInt64.self), let replyOption = reader.read(UInt32.self),
            reader.read(UInt32.self) != nil, let length = reader.read(UInt32.self),
            reader.read(byteCount: Int(length)) != nil
        else { preconditionFailure("option reply cut short") }
        precondition(magic == Magic.optionReply, "bad option reply magic")
        precondition(replyOption == option, "reply names another option")
        precondition(length <= Handshake.maxOptionByteCount, "reply payload too long")
    }
}

@_cdecl("FuzzHandshake_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
