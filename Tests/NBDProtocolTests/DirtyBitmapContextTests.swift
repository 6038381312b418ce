// `qemu:dirty-bitmap:NAME` contexts in the handshake: listed like qemu-nbd's (every context, the
// `qemu:` namespace, the `qemu:dirty-bitmap:` prefix), selected by exact name with ids from 3.

import NBDProtocol
import Testing

private func checkpointedDisk() -> ExportDescription {
    var export = ExportDescription(
        name: "disk", description: "", byteCount: 1 << 30, isReadOnly: false)
    export.dirtyBitmapNames = ["monday", "tuesday"]
    return export
}

private func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.appendBigEndian(value)
    return bytes
}

private func metaData(name: String, queries: [String]) -> [UInt8] {
    bigEndian(UInt32(name.utf8.count)) + Array(name.utf8) + bigEndian(UInt32(queries.count))
        + queries.flatMap { bigEndian(UInt32($0.utf8.count)) + Array($0.utf8) }
}

/// The (id, name) of each NBD_REP_META_CONTEXT reply, then whether an ACK ends them.
private func contexts(_ action: HandshakeAction) -> (named: [(UInt32, String)], acked: Bool) {
    guard case .reply(let bytes) = action else { return ([], false) }
    var reader = ByteReader(bytes)
    var named: [(UInt32, String)] = []
    var acked = false
    while reader.remainingByteCount > 0 {
        guard reader.read(UInt64.self) == 0x0003_e889_0455_65a9, reader.read(UInt32.self) != nil,
            let type = reader.read(UInt32.self), let length = reader.read(UInt32.self),
            let payload = reader.read(byteCount: Int(length))
        else { return ([], false) }
        if type == 4 {
            let bytes = Array(payload)
            let id = bytes[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            named.append((id, String(decoding: bytes[4...], as: UTF8.self)))
        } else if type == 1 {
            acked = true
        }
    }
    return (named, acked)
}

@Test func listMetaContextOffersADirtyBitmapPerCheckpointLikeQemuNbd() {
    var handshake = Handshake(exports: [checkpointedDisk()])
    _ = handshake.handle(option: 8, data: [])
    let all = contexts(handshake.handle(option: 9, data: metaData(name: "disk", queries: [])))
    #expect(
        all.named.map(\.1) == [
            "base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:monday",
            "qemu:dirty-bitmap:tuesday",
        ])
    #expect(all.named.allSatisfy { $0.0 == 0 } && all.acked)
    let bitmaps = contexts(
        handshake.handle(option: 9, data: metaData(name: "disk", queries: ["qemu:dirty-bitmap:"])))
    #expect(bitmaps.named.map(\.1) == ["qemu:dirty-bitmap:monday", "qemu:dirty-bitmap:tuesday"])
    let qemu = contexts(
        handshake.handle(option: 9, data: metaData(name: "disk", queries: ["qemu:"])))
    #expect(qemu.named.count == 3)
}

@Test func setMetaContextSelectsABitmapByExactNameOnly() {
    var handshake = Handshake(exports: [checkpointedDisk()])
    _ = handshake.handle(option: 8, data: [])
    let queries = [
        "qemu:dirty-bitmap:tuesday", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:friday",
        "qemu:dirty-bitmap:monda",
    ]
    let set = contexts(handshake.handle(option: 10, data: metaData(name: "disk", queries: queries)))
    #expect(set.named.map(\.0) == [4] && set.named.map(\.1) == ["qemu:dirty-bitmap:tuesday"])
    let go =
        bigEndian(UInt32(4)) + Array("disk".utf8) + bigEndian(UInt16(0))
    _ = handshake.handle(option: 7, data: go)
    #expect(handshake.session?.metaContexts == [.dirtyBitmap(checkpointName: "tuesday", id: 4)])
}

@Test func anExportWithoutCheckpointsOffersNoBitmap() {
    var handshake = Handshake(
        exports: [ExportDescription(name: "", description: "", byteCount: 4096, isReadOnly: true)])
    _ = handshake.handle(option: 8, data: [])
    let listed = contexts(
        handshake.handle(option: 9, data: metaData(name: "", queries: ["qemu:dirty-bitmap:"])))
    #expect(listed.named.isEmpty && listed.acked)
}
