// Requests with extended headers as raw bytes (libnbd 1.14 cannot send them): a WRITE marked
// with NBD_CMD_FLAG_PAYLOAD_LEN, another command carrying a payload, a FLUSH with reserved
// fields set, and CACHE at and over its limit.

import NBDClient
import Testing

@Suite struct ExtendedRequestTests {
    static let flagPayloadLength: UInt16 = 1 << 5
    static let cmdWrite: UInt16 = 1
    static let cmdFlush: UInt16 = 3
    static let cmdCache: UInt16 = 5
    static let replyTypeError: UInt16 = 0x8001
    static let errorInvalid: UInt32 = 22
    static let errorOverflow: UInt32 = 75

    /// One extended reply chunk: flags, type, cookie and payload.
    struct Chunk {
        var flags: UInt16
        var type: UInt16
        var cookie: UInt64
        var payload: [UInt8]
        /// The error of an error chunk.
        var error: UInt32? {
            guard type & 0x8000 != 0, payload.count >= 4 else { return nil }
            return payload[0..<4].reduce(0) { $0 << 8 | UInt32($1) }
        }
    }

    /// Greets, negotiates extended headers and enters transmission with NBD_OPT_GO.
    func extendedSession(_ server: TestServer) throws -> RawSocket {
        let raw = RawProtocolTests()
        let socket = try RawSocket(unixSocketPath: server.socketPath)
        try raw.greet(socket)
        try raw.sendOption(socket, Wire.optExtendedHeaders)
        let (_, type, _) = try raw.receiveOptionReply(socket)
        try #require(type == Wire.repAck, "NBD_OPT_EXTENDED_HEADERS reply type \(type)")
        let name = Array("disk".utf8)
        try raw.sendOption(
            socket, Wire.optGo, bigEndian(UInt32(name.count)) + name + bigEndian(UInt16(0)))
        for _ in 0..<10 {
            let (_, replyType, _) = try raw.receiveOptionReply(socket)
            if replyType == Wire.repAck { return socket }
            try #require(replyType == Wire.repInfo, "NBD_OPT_GO reply type \(replyType)")
        }
        throw TestFailure("NBD_OPT_GO never acknowledged")
    }

    func sendRequest(
        _ socket: RawSocket, type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64,
        length: UInt64, payload: [UInt8] = []
    ) throws {
        try socket.send(
            bigEndian(Wire.extendedRequestMagic) + bigEndian(flags) + bigEndian(type)
                + bigEndian(cookie) + bigEndian(offset) + bigEndian(length) + payload)
    }

    func receiveChunk(_ socket: RawSocket) throws -> Chunk {
        #expect(try socket.receiveUInt32() == Wire.extendedReplyMagic)
        let flags = try socket.receiveUInt16()
        let type = try socket.receiveUInt16()
        let cookie = try socket.receiveUInt64()
        _ = try socket.receiveUInt64()
        let length = try socket.receiveUInt64()
        try #require(length <= 1 << 20, "reply chunk of \(length) bytes")
        return Chunk(
            flags: flags, type: type, cookie: cookie, payload: try socket.receive(Int(length)))
    }

    /// The bytes of a READ whose reply is one OFFSET_DATA chunk.
    func read(_ socket: RawSocket, cookie: UInt64, offset: UInt64, length: Int) throws -> [UInt8] {
        try sendRequest(
            socket, type: Wire.cmdRead, cookie: cookie, offset: offset, length: UInt64(length))
        let chunk = try receiveChunk(socket)
        try #require(chunk.type == Wire.replyTypeOffsetData && chunk.cookie == cookie)
        return Array(chunk.payload.dropFirst(8))
    }

    @Test func writeMarkedWithPayloadLengthIsWritten() throws {
        try withTestServer { server in
            let socket = try extendedSession(server)
            let data = patternBytes(count: 4096, seed: 41)
            try sendRequest(
                socket, type: Self.cmdWrite, flags: Self.flagPayloadLength, cookie: 1,
                offset: 8192, length: 4096, payload: data)
            let reply = try receiveChunk(socket)
            #expect(
                reply.cookie == 1 && reply.type == Wire.replyTypeNone, "error \(reply.error ?? 0)")
            #expect(try read(socket, cookie: 2, offset: 8192, length: 4096) == data)
        }
    }

    @Test func payloadOnAnotherCommandIsReadAndRefusedAndTheStreamStaysInStep() throws {
        try withTestServer { server in
            let socket = try extendedSession(server)
            // A READ that says its length is a payload's: 24 bytes follow, which would parse
            // as most of a request header if the server did not read them as payload.
            let payload = bigEndian(Wire.extendedRequestMagic) + patternBytes(count: 20, seed: 42)
            try sendRequest(
                socket, type: Wire.cmdRead, flags: Self.flagPayloadLength, cookie: 3, offset: 0,
                length: UInt64(payload.count), payload: payload)
            let reply = try receiveChunk(socket)
            #expect(reply.cookie == 3 && reply.error == Self.errorInvalid)
            #expect(reply.flags & Wire.replyFlagDone != 0)
            #expect(
                try read(socket, cookie: 4, offset: 100, length: 64)
                    == Array(TestImage.bytes[100..<164]))
        }
    }

    @Test func flushWithReservedFieldsSetSucceeds() throws {
        try withTestServer { server in
            let socket = try extendedSession(server)
            try sendRequest(socket, type: Self.cmdFlush, cookie: 5, offset: 1 << 62, length: 77)
            let reply = try receiveChunk(socket)
            #expect(
                reply.cookie == 5 && reply.type == Wire.replyTypeNone, "error \(reply.error ?? 0)")
        }
    }

    @Test func cacheOverTheMaximumPayloadFailsWithEOVERFLOWAndUpToItSucceeds() throws {
        var options = ServerOptions()
        options.zeroBaseByteCount = 64 << 20
        try withTestServer(options) { server in
            let socket = try extendedSession(server)
            try sendRequest(socket, type: Self.cmdCache, cookie: 6, offset: 0, length: 32 << 20)
            let accepted = try receiveChunk(socket)
            #expect(accepted.cookie == 6 && accepted.type == Wire.replyTypeNone)
            try sendRequest(
                socket, type: Self.cmdCache, cookie: 7, offset: 0, length: (32 << 20) + 1)
            let refused = try receiveChunk(socket)
            #expect(refused.cookie == 7 && refused.error == Self.errorOverflow)
        }
    }
}
