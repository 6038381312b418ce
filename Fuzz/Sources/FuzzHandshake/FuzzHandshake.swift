// Fuzz target: the option phase of the handshake, read as `NBDServer` reads it (client flags,
// then option headers and their data, with the same length limit), fed to `Handshake`.
// Input: the bytes a client sends after the server's greeting.

import FuzzSupport
import NBDProtocol

let exports = [
    ExportDescription(name: "disk", description: "fuzz", byteCount: 1 << 30, isReadOnly: false)
]

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    var reader = ByteReader(Array(UnsafeBufferPointer(start: data, count: byteCount)))
    var handshake = Handshake(exports: exports)
    guard let flags = reader.read(UInt32.self), handshake.receiveClientFlags(flags) == nil else {
        return 0
    }
    while let magic = reader.read(UInt64.self), magic == Magic.option,
        let option = reader.read(UInt32.self), let length = reader.read(UInt32.self),
        length <= Handshake.maxOptionByteCount,
        let optionData = reader.read(byteCount: Int(length))
    {
        switch handshake.handle(option: option, data: Array(optionData)) {
        case .reply(let bytes):
            checkReplies(bytes, option: option)
        case .replyAndTransmit(let bytes):
            precondition(handshake.session != nil, "transmission without a session")
            if option != Option.exportName.rawValue { checkReplies(bytes, option: option) }
            return 0
        case .replyAndClose:
            return 0
        }
    }
    return 0
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
