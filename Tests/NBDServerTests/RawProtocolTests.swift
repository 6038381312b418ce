// The wire as bytes, without libnbd: an unknown option, the oldest way in (EXPORT_NAME and
// simple replies), extended headers, and a client that sends garbage.

import NBDClient
import Testing

@Suite struct RawProtocolTests {
    /// Reads the greeting and answers with fixed newstyle and NO_ZEROES.
    func greet(_ socket: RawSocket) throws {
        #expect(try socket.receiveUInt64() == Wire.initPassword)
        #expect(try socket.receiveUInt64() == Wire.optionMagic)
        let handshakeFlags = try socket.receiveUInt16()
        try #require(handshakeFlags & Wire.flagFixedNewstyle != 0)
        #expect(handshakeFlags & Wire.flagNoZeroes != 0)
        try socket.send(bigEndian(UInt32(Wire.flagFixedNewstyle | Wire.flagNoZeroes)))
    }

    func sendOption(_ socket: RawSocket, _ option: UInt32, _ data: [UInt8] = []) throws {
        try socket.send(
            bigEndian(Wire.optionMagic) + bigEndian(option) + bigEndian(UInt32(data.count)) + data)
    }

    /// One option reply: (option echoed, reply type, data).
    func receiveOptionReply(_ socket: RawSocket) throws -> (UInt32, UInt32, [UInt8]) {
        #expect(try socket.receiveUInt64() == Wire.optionReplyMagic)
        let option = try socket.receiveUInt32()
        let type = try socket.receiveUInt32()
        let length = try socket.receiveUInt32()
        try #require(length <= 65_536, "option reply of \(length) bytes")
        return (option, type, try socket.receive(Int(length)))
    }

    /// A request with the 28-byte compact header.
    func sendRequest(
        _ socket: RawSocket, type: UInt16, cookie: UInt64, byteOffset: UInt64, length: UInt32
    ) throws {
        try socket.send(
            bigEndian(Wire.requestMagic) + bigEndian(UInt16(0)) + bigEndian(type)
                + bigEndian(cookie)
                + bigEndian(byteOffset) + bigEndian(length))
    }

    @Test func unknownOptionGetsErrUnsupAndTheHandshakeContinuesToASimpleRead() throws {
        try withTestServer { server in
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try greet(socket)
            for (option, data) in [(UInt32(0x1234), patternBytes(count: 17, seed: 1)), (99, [])] {
                try sendOption(socket, option, data)
                let (echoed, type, _) = try receiveOptionReply(socket)
                #expect(echoed == option)
                #expect(type == Wire.repErrUnsup, "reply to unknown option \(option)")
            }
            try sendOption(socket, Wire.optExportName, Array("disk".utf8))
            #expect(try socket.receiveUInt64() == UInt64(TestImage.byteCount))
            let transmissionFlags = try socket.receiveUInt16()
            #expect(transmissionFlags & 1 != 0, "NBD_FLAG_HAS_FLAGS")

            // No structured replies were negotiated: simple replies only.
            try sendRequest(
                socket, type: Wire.cmdRead, cookie: 0xABCD_EF01, byteOffset: 4000, length: 9000)
            #expect(try socket.receiveUInt32() == Wire.simpleReplyMagic)
            #expect(try socket.receiveUInt32() == 0, "error")
            #expect(try socket.receiveUInt64() == 0xABCD_EF01)
            #expect(try socket.receive(9000) == Array(TestImage.bytes[4000..<13_000]))

            // An out-of-range read: EINVAL and no payload; the stream stays in step.
            try sendRequest(
                socket, type: Wire.cmdRead, cookie: 2, byteOffset: UInt64(TestImage.byteCount),
                length: 1)
            #expect(try socket.receiveUInt32() == Wire.simpleReplyMagic)
            #expect(try socket.receiveUInt32() == 22, "NBD_EINVAL")
            #expect(try socket.receiveUInt64() == 2)
            try sendRequest(socket, type: Wire.cmdRead, cookie: 3, byteOffset: 0, length: 16)
            #expect(try socket.receiveUInt32() == Wire.simpleReplyMagic)
            #expect(try socket.receiveUInt32() == 0)
            #expect(try socket.receiveUInt64() == 3)
            #expect(try socket.receive(16) == Array(TestImage.bytes[0..<16]))

            try sendRequest(socket, type: Wire.cmdDisc, cookie: 4, byteOffset: 0, length: 0)
            #expect(socket.peerCloses(), "server keeps the connection open after NBD_CMD_DISC")
        }
    }

    @Test func exportNameOptionWithAnUnknownNameClosesTheConnection() throws {
        try withTestServer { server in
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try greet(socket)
            // Spec: NBD_OPT_EXPORT_NAME has no error reply; an unwilling server hangs up.
            try sendOption(socket, Wire.optExportName, Array("no-such-export".utf8))
            #expect(socket.peerCloses())
        }
    }

    @Test func garbageRequestMagicClosesThatConnectionOnly() throws {
        try withTestServer { server in
            let healthy = try server.connect()
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try greet(socket)
            try sendOption(socket, Wire.optExportName, Array("disk".utf8))
            _ = try socket.receive(8 + 2)
            try socket.send(bigEndian(UInt32(0xDEAD_BEEF)) + patternBytes(count: 24, seed: 2))
            #expect(socket.peerCloses(), "server kept a connection that sent a bad request magic")
            try expectRead(healthy, matches: DiskModel(), at: 0, byteCount: 65_536)
            let fresh = try server.connect()
            try expectRead(fresh, matches: DiskModel(), at: 65_536, byteCount: 65_536)
        }
    }

    @Test func garbageOptionMagicClosesThatConnectionOnly() throws {
        try withTestServer { server in
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try greet(socket)
            try socket.send(Array("NOTANOPT".utf8) + bigEndian(UInt32(7)) + bigEndian(UInt32(0)))
            #expect(socket.peerCloses(), "server kept a connection that sent a bad option magic")
            let fresh = try server.connect()
            try expectRead(fresh, matches: DiskModel(), at: 0, byteCount: 4096)
        }
    }

    @Test func extendedHeadersServeAReadWithExtendedReplies() throws {
        try withTestServer { server in
            let socket = try RawSocket(unixSocketPath: server.socketPath)
            try greet(socket)
            try sendOption(socket, Wire.optExtendedHeaders)
            let (echoed, type, _) = try receiveOptionReply(socket)
            #expect(echoed == Wire.optExtendedHeaders)
            try #require(type == Wire.repAck, "NBD_OPT_EXTENDED_HEADERS reply type \(type)")

            let name = Array("disk".utf8)
            try sendOption(
                socket, Wire.optGo, bigEndian(UInt32(name.count)) + name + bigEndian(UInt16(0)))
            var exportByteCount: UInt64?
            while true {
                let (_, replyType, data) = try receiveOptionReply(socket)
                if replyType == Wire.repAck { break }
                try #require(replyType == Wire.repInfo, "NBD_OPT_GO reply type \(replyType)")
                if data.count == 12, data[0] == 0, data[1] == 0 {  // NBD_INFO_EXPORT
                    exportByteCount = data[2..<10].reduce(0) { $0 << 8 | UInt64($1) }
                }
            }
            #expect(exportByteCount == UInt64(TestImage.byteCount))

            // 32-byte request: magic, flags, type, cookie, offset, 64-bit length.
            try socket.send(
                bigEndian(Wire.extendedRequestMagic) + bigEndian(UInt16(0))
                    + bigEndian(Wire.cmdRead)
                    + bigEndian(UInt64(77)) + bigEndian(UInt64(5000)) + bigEndian(UInt64(12_000)))
            // Chunks may come in any order (spec: structured replies): place each by offset.
            var received = [UInt8](repeating: 0xEE, count: 12_000)
            var coveredByteCount = 0
            var done = false
            for _ in 0..<100 where !done {
                // 32-byte reply: magic, flags, type, cookie, offset, 64-bit payload length.
                #expect(try socket.receiveUInt32() == Wire.extendedReplyMagic)
                let flags = try socket.receiveUInt16()
                let replyType = try socket.receiveUInt16()
                #expect(try socket.receiveUInt64() == 77)
                _ = try socket.receiveUInt64()
                let payloadLength = try socket.receiveUInt64()
                try #require(payloadLength <= 12_000 + 8)
                let payload = try socket.receive(Int(payloadLength))
                done = flags & Wire.replyFlagDone != 0
                if replyType == Wire.replyTypeNone { continue }
                try #require(replyType == Wire.replyTypeOffsetData, "reply chunk type \(replyType)")
                let chunkOffset = Int(payload[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
                let data = payload[8...]
                try #require(chunkOffset >= 5000 && chunkOffset + data.count <= 17_000)
                received.replaceSubrange(
                    (chunkOffset - 5000)..<(chunkOffset - 5000 + data.count), with: data)
                coveredByteCount += data.count
            }
            #expect(done)
            #expect(coveredByteCount == 12_000)
            #expect(received == Array(TestImage.bytes[5000..<17_000]))
        }
    }
}
