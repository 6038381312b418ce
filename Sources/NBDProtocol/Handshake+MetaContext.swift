// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT for `base:allocation`,
// `qemu:allocation-depth` and one `qemu:dirty-bitmap:NAME` a checkpoint. Queries in other
// namespaces are ignored, as the spec requires.

extension Handshake {
    mutating func metaContext(_ option: Option, _ data: [UInt8]) -> [UInt8] {
        let raw = option.rawValue
        let isSet = option == .setMetaContext
        if isSet { setSelectedContexts([], exportName: nil) }  // replaced even on failure
        guard structuredReplies else {
            return Self.reply(raw, .errInvalid, message: "negotiate structured replies first")
        }
        var reader = ByteReader(data)
        guard let nameLength = reader.read(UInt32.self),
            let nameBytes = reader.read(byteCount: Int(nameLength)),
            let queryCount = reader.read(UInt32.self)
        else { return Self.reply(raw, .errInvalid, message: "malformed meta context option") }
        var queries: [String] = []
        for _ in 0..<min(queryCount, UInt32(Self.maxOptionByteCount / 4)) {
            guard let length = reader.read(UInt32.self),
                let query = reader.read(byteCount: Int(length))
            else {
                return Self.reply(
                    raw, .errInvalid, message: "meta context query runs past the option")
            }
            queries.append(String(decoding: query, as: UTF8.self))
        }
        guard reader.remainingByteCount == 0, queries.count == Int(queryCount) else {
            return Self.reply(raw, .errInvalid, message: "malformed meta context option")
        }
        let name = String(decoding: nameBytes, as: UTF8.self)
        guard let export = export(named: name) else {
            return Self.reply(raw, .errUnknown, message: "no export named '\(name)'")
        }
        let offered = MetaContext.offered(by: export)
        let contexts = isSet ? selected(by: queries, offered) : listed(by: queries, offered)
        if isSet { setSelectedContexts(contexts, exportName: name) }
        var bytes: [UInt8] = []
        for context in contexts {
            var payload: [UInt8] = []
            // LIST replies carry id 0, as the spec reserves it there.
            payload.appendBigEndian(isSet ? context.id : 0)
            payload += Array(context.name.utf8)
            bytes += Self.reply(raw, .metaContext, payload: payload)
        }
        return bytes + Self.reply(raw, .ack)
    }

    /// LIST: no query means every context; `ns:` is a wildcard for a namespace (and
    /// `qemu:dirty-bitmap:` for every bitmap, as qemu-nbd answers it).
    private func listed(by queries: [String], _ offered: [MetaContext]) -> [MetaContext] {
        if queries.isEmpty { return offered }
        return offered.filter { context in
            queries.contains { query in
                query == context.name || (query.hasSuffix(":") && context.name.hasPrefix(query))
            }
        }
    }

    /// SET: only exact names select (the wildcard `base:` selects nothing), each once.
    private func selected(by queries: [String], _ offered: [MetaContext]) -> [MetaContext] {
        offered.filter { queries.contains($0.name) }
    }
}
