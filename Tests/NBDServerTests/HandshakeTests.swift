// The handshake as libnbd drives it: structured replies on and off, opt mode (INFO, LIST,
// LIST_META_CONTEXT, GO, ABORT), export names, and what the server advertises.

import NBDClient
import Testing

@Suite struct HandshakeTests {
    @Test func fixedNewstyleHandshakeNegotiatesStructuredRepliesByDefault() throws {
        try withTestServer { server in
            let connection = try server.connect()
            #expect(try connection.handshakeProtocol() == "newstyle-fixed")
            #expect(try connection.structuredRepliesNegotiated())
            #expect(try connection.size() == UInt64(TestImage.byteCount))
            #expect(
                try connection.pread(at: 0, byteCount: 8192) == Array(TestImage.bytes[0..<8192]))
        }
    }

    @Test func simpleRepliesServeReadsAndWritesWhenStructuredRepliesAreNotRequested() throws {
        try withTestServer { server in
            let connection = try server.connect { try $0.setRequestStructuredReplies(false) }
            #expect(try connection.structuredRepliesNegotiated() == false)
            // DF only has meaning with structured replies (spec: NBD_FLAG_SEND_DF).
            #expect(try connection.canDF() == false)
            var model = DiskModel()
            let data = patternBytes(count: 6000, seed: 1)
            try connection.pwrite(data, at: 4000)
            model.write(data, at: 4000)
            let bytes = try connection.pread(at: 3000, byteCount: 9000)
            #expect(
                firstDifference(bytes, model.read(at: 3000, byteCount: 9000), base: 3000) == nil)
        }
    }

    @Test func transmissionFlagsAdvertiseEveryCommandAndMultiConn() throws {
        try withTestServer { server in
            let connection = try server.connect()
            #expect(try connection.isReadOnly() == false)
            #expect(try connection.canFlush())
            #expect(try connection.canFUA())
            #expect(try connection.canTrim())
            #expect(try connection.canZero())
            #expect(try connection.canFastZero())
            #expect(try connection.canCache())
            #expect(try connection.canDF())
            #expect(try connection.canMultiConn())
        }
    }

    @Test func readOnlyExportAdvertisesReadOnly() throws {
        var options = ServerOptions()
        options.readOnly = true
        try withTestServer(options) { server in
            let connection = try server.connect()
            #expect(try connection.isReadOnly())
            #expect(
                try connection.pread(at: 100, byteCount: 100) == Array(TestImage.bytes[100..<200]))
        }
    }

    @Test func optInfoReportsSizeNameDescriptionAndBlockSizes() throws {
        try withTestServer { server in
            let connection = try server.connect {
                try $0.setOptMode(true)
                try $0.setFullInfo(true)
            }
            try connection.optInfo()
            #expect(try connection.size() == UInt64(TestImage.byteCount))
            #expect(try connection.canonicalExportName() == "disk")
            #expect(try connection.exportDescription() == "cowbd test disk")
            let constraints = try connection.blockSizeConstraints()
            #expect(constraints.minimum == 1)
            #expect(constraints.preferred == 4096)
            #expect(constraints.maximum == 32 * 1024 * 1024)
            // INFO leaves the handshake open: GO then enters transmission.
            try connection.optGo()
            #expect(try connection.pread(at: 0, byteCount: 16) == Array(TestImage.bytes[0..<16]))
        }
    }

    @Test func preferredBlockSizeIsTheChunkSize() throws {
        var options = ServerOptions()
        options.chunkByteCount = 64 * 1024
        try withTestServer(options) { server in
            let connection = try server.connect()
            let constraints = try connection.blockSizeConstraints()
            #expect(constraints.minimum == 1)
            #expect(constraints.preferred == 64 * 1024)
            #expect(constraints.maximum == 32 * 1024 * 1024)
        }
    }

    @Test func optListNamesTheExportWithItsDescription() throws {
        try withTestServer { server in
            let connection = try server.connect { try $0.setOptMode(true) }
            let exports = try connection.optList()
            #expect(
                exports.contains { $0.name == "disk" && $0.description == "cowbd test disk" })
            try connection.optAbort()
        }
    }

    @Test func optListMetaContextOffersBaseAllocation() throws {
        try withTestServer { server in
            let everything = try server.connect { try $0.setOptMode(true) }
            #expect(try everything.optListMetaContext().contains("base:allocation"))
            try everything.optAbort()

            let asked = try server.connect {
                try $0.setOptMode(true)
                try $0.addMetaContext("base:allocation")
                try $0.addMetaContext("nosuch:context")
            }
            #expect(try asked.optListMetaContext() == ["base:allocation"])
            try asked.optGo()
            #expect(try asked.canMetaContext("base:allocation"))
            #expect(try asked.canMetaContext("nosuch:context") == false)
        }
    }

    @Test func optAbortEndsTheHandshakeAndTheServerKeepsServing() throws {
        try withTestServer { server in
            let aborted = try server.connect { try $0.setOptMode(true) }
            try aborted.optAbort()
            #expect(throws: NBDClientError.self) { try aborted.pread(at: 0, byteCount: 1) }
            let next = try server.connect()
            #expect(try next.pread(at: 0, byteCount: 512) == Array(TestImage.bytes[0..<512]))
        }
    }

    @Test func unknownExportNameIsRefusedAndTheHandshakeContinues() throws {
        try withTestServer { server in
            let connection = try server.connect(exportName: "no-such-export") {
                try $0.setOptMode(true)
            }
            #expect(throws: NBDClientError.self) { try connection.optInfo() }
            #expect(throws: NBDClientError.self) { try connection.optGo() }
            // The refusal is an option error, not a hang-up: the default export still works.
            try connection.setExportName("")
            try connection.optGo()
            #expect(try connection.size() == UInt64(TestImage.byteCount))
        }
    }

    @Test func connectingToAnUnknownExportNameFails() throws {
        try withTestServer { server in
            #expect(throws: NBDClientError.self) { _ = try server.connect(exportName: "disk2") }
            #expect(throws: NBDClientError.self) { _ = try server.connect(exportName: "DISK") }
        }
    }

    @Test func emptyExportNameSelectsTheDefaultExport() throws {
        try withTestServer { server in
            let named = try server.connect()
            let data = patternBytes(count: 4096, seed: 7)
            try named.pwrite(data, at: 8192)
            try named.flush()
            let unnamed = try server.connect(exportName: "")
            #expect(try unnamed.size() == UInt64(TestImage.byteCount))
            #expect(try unnamed.pread(at: 8192, byteCount: 4096) == data)
        }
    }

    @Test func printedURIConnectsToTheExport() throws {
        try withTestServer { server in
            #expect(server.printedURI.hasPrefix("nbd+unix://"))
            let connection = try NBDConnection()
            try connection.connect(uri: server.printedURI)
            #expect(try connection.size() == UInt64(TestImage.byteCount))
        }
    }
}
