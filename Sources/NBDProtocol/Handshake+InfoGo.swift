// NBD_OPT_INFO and NBD_OPT_GO: describe an export, and for GO, enter transmission.

extension Handshake {
    mutating func infoOrGo(_ option: Option, _ data: [UInt8]) -> HandshakeAction {
        let raw = option.rawValue
        var reader = ByteReader(data)
        guard let nameLength = reader.read(UInt32.self), Int(nameLength) <= data.count - 6,
            let nameBytes = reader.read(byteCount: Int(nameLength)),
            let requestCount = reader.read(UInt16.self),
            reader.remainingByteCount == Int(requestCount) * 2
        else {
            return .reply(
                Self.reply(
                    raw, .errInvalid,
                    message: "malformed \(option == .go ? "NBD_OPT_GO" : "NBD_OPT_INFO")"))
        }
        var requested: Set<UInt16> = []
        for _ in 0..<requestCount {
            if let item = reader.read(UInt16.self) { requested.insert(item) }
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard let export = export(named: name) else {
            return .reply(Self.reply(raw, .errUnknown, message: "no export named '\(name)'"))
        }
        var bytes: [UInt8] = []
        var exportInfo: [UInt8] = []
        exportInfo.appendBigEndian(InfoType.export.rawValue)
        exportInfo.appendBigEndian(export.byteCount)
        exportInfo.appendBigEndian(transmissionFlags(for: export).rawValue)
        bytes += Self.reply(raw, .info, payload: exportInfo)
        if requested.contains(InfoType.name.rawValue) {
            var payload: [UInt8] = []
            payload.appendBigEndian(InfoType.name.rawValue)
            payload += Array(export.name.utf8)
            bytes += Self.reply(raw, .info, payload: payload)
        }
        if requested.contains(InfoType.description.rawValue), !export.description.isEmpty {
            var payload: [UInt8] = []
            payload.appendBigEndian(InfoType.description.rawValue)
            payload += Array(export.description.utf8.prefix(Self.maxStringByteCount))
            bytes += Self.reply(raw, .info, payload: payload)
        }
        // Sent whether asked or not: the constraints are the protocol's defaults or looser,
        // so a client that ignores them is still correct.
        var blockSize: [UInt8] = []
        blockSize.appendBigEndian(InfoType.blockSize.rawValue)
        blockSize.appendBigEndian(export.minimumBlockByteCount)
        blockSize.appendBigEndian(export.preferredBlockByteCount)
        blockSize.appendBigEndian(export.maximumPayloadByteCount)
        bytes += Self.reply(raw, .info, payload: blockSize)
        bytes += Self.reply(raw, .ack)
        guard option == .go else { return .reply(bytes) }
        choose(export, name: name)
        return .replyAndTransmit(bytes)
    }
}
