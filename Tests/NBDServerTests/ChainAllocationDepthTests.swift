// qemu:allocation-depth over a chain served by cowbd: 1 for the top store, 2 for the frozen
// layer under it, 3 for the raw base, as qemu counts a backing chain.

import Foundation
import NBDClient
import Testing

@Test func allocationDepthCountsEveryLayerOfAChain() throws {
    try withTestServer { server in
        var connection = try server.connect()
        try connection.pwrite(patternBytes(count: 4096, seed: 50), at: 0)
        try connection.flush()
        try connection.shutdown()
        try server.stop()
        // disk.cow's chunk becomes a frozen layer's; disk.cow starts empty over it.
        let layerPath = server.folder.appendingPathComponent("layer.cow").path
        try server.runToCompletion(
            try TestServer.cowbdExecutable(), ["snapshot", server.storePath, layerPath])
        try server.start()
        connection = try server.connect { try $0.addMetaContext("qemu:allocation-depth") }
        try #require(try connection.canMetaContext("qemu:allocation-depth"))
        try connection.pwrite(patternBytes(count: 4096, seed: 51), at: 8192)
        let placed = try extents(
            connection, context: "qemu:allocation-depth", covering: 0..<16384)
        #expect(flags(of: placed, overlapping: 0..<4096) == [2], "\(placed)")
        #expect(flags(of: placed, overlapping: 4096..<8192) == [3], "\(placed)")
        #expect(flags(of: placed, overlapping: 8192..<12288) == [1], "\(placed)")
        #expect(try connection.pread(at: 0, byteCount: 4096) == patternBytes(count: 4096, seed: 50))
        try connection.shutdown()
    }
}
