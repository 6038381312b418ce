// Requests the server must refuse, with the spec's error ("Error values"): out of range,
// writes to a read-only export, FAST_ZERO that would need a copy. libnbd's own checks are
// turned off (`setStrictMode([])`) so each request reaches the server. After every refusal the
// connection and the server must keep working and nothing may have changed.

import Foundation
import NBDClient
import Testing

@Suite struct ErrorTests {
    static let size = UInt64(TestImage.byteCount)

    func connectUnchecked(_ server: TestServer) throws -> NBDConnection {
        let connection = try server.connect { try $0.addMetaContext("base:allocation") }
        try connection.setStrictMode([])
        return connection
    }

    @Test func readPastTheEndFailsWithEINVAL() throws {
        try withTestServer { server in
            let connection = try connectUnchecked(server)
            #expect(
                nbdErrno { _ = try connection.pread(at: Self.size - 10, byteCount: 20) } == EINVAL)
            #expect(nbdErrno { _ = try connection.pread(at: Self.size, byteCount: 1) } == EINVAL)
            // offset + length wraps around 2^64: must not be taken as a small offset.
            #expect(
                nbdErrno { _ = try connection.pread(at: UInt64.max - 100, byteCount: 4096) }
                    == EINVAL)
            try expectRead(connection, matches: DiskModel(), at: Self.size - 10, byteCount: 10)
        }
    }

    @Test func writePastTheEndFailsWithENOSPCAndWritesNothing() throws {
        try withTestServer { server in
            let connection = try connectUnchecked(server)
            // Spec ("Error values"): a write beyond the end SHOULD fail with NBD_ENOSPC.
            let data = patternBytes(count: 20, seed: 50)
            #expect(nbdErrno { try connection.pwrite(data, at: Self.size - 10) } == ENOSPC)
            #expect(nbdErrno { try connection.zero(at: Self.size - 10, byteCount: 20) } == ENOSPC)
            try expectRead(connection, matches: DiskModel(), at: Self.size - 4096, byteCount: 4096)
        }
    }

    @Test func trimCacheAndBlockStatusPastTheEndFailWithEINVAL() throws {
        try withTestServer { server in
            let connection = try connectUnchecked(server)
            #expect(
                nbdErrno { try connection.trim(at: Self.size - 4096, byteCount: 8192) } == EINVAL)
            #expect(nbdErrno { try connection.cache(at: Self.size, byteCount: 4096) } == EINVAL)
            #expect(
                nbdErrno { _ = try connection.blockStatus(at: Self.size, byteCount: 4096) }
                    == EINVAL)
            try expectRead(connection, matches: DiskModel(), at: Self.size - 8192, byteCount: 8192)
        }
    }

    @Test func writeTrimAndZeroOnAReadOnlyExportFailWithEPERM() throws {
        var options = ServerOptions()
        options.readOnly = true
        try withTestServer(options) { server in
            let connection = try connectUnchecked(server)
            let data = patternBytes(count: 4096, seed: 51)
            #expect(nbdErrno { try connection.pwrite(data, at: 0) } == EPERM)
            #expect(nbdErrno { try connection.pwrite(data, at: 4096, flags: .fua) } == EPERM)
            #expect(nbdErrno { try connection.trim(at: 0, byteCount: 4096) } == EPERM)
            #expect(nbdErrno { try connection.zero(at: 0, byteCount: 4096) } == EPERM)
            #expect(
                nbdErrno { try connection.zero(at: 0, byteCount: 4096, flags: .fastZero) } == EPERM)
            try expectRead(connection, matches: DiskModel(), at: 0, byteCount: 8192)
        }
    }

    @Test func flushAndCacheOnAReadOnlyExportSucceed() throws {
        var options = ServerOptions()
        options.readOnly = true
        try withTestServer(options) { server in
            let connection = try connectUnchecked(server)
            // FLUSH is sent even if not advertised: an advertised FLUSH must succeed, and
            // whatever the answer, the server must go on serving.
            let advertised = try connection.canFlush()
            do {
                try connection.flush()
            } catch let error as NBDClientError {
                #expect(advertised == false, "advertised FLUSH failed: \(error)")
            }
            try connection.cache(at: 0, byteCount: 8192)
            try expectRead(connection, matches: DiskModel(), at: 0, byteCount: 8192)
            let other = try server.connect()
            try expectRead(other, matches: DiskModel(), at: 8192, byteCount: 8192)
        }
    }

    @Test func fastZeroOfPartOfAnUntouchedChunkFailsWithENOTSUPAndChangesNothing() throws {
        try withTestServer { server in
            let connection = try connectUnchecked(server)
            // 1000 bytes inside chunk 10, over base data: zeroing needs a copy-up, not fast.
            #expect(
                nbdErrno {
                    try connection.zero(at: 10 * 4096 + 100, byteCount: 1000, flags: .fastZero)
                }
                    == ENOTSUP)
            #expect(
                nbdErrno {
                    try connection.zero(
                        at: 20 * 4096 - 10, byteCount: 4096 + 20, flags: [.fastZero, .noHole])
                } == ENOTSUP)
            try expectRead(connection, matches: DiskModel(), at: 9 * 4096, byteCount: 13 * 4096)
        }
    }

    @Test func serverKeepsServingAfterErrors() throws {
        try withTestServer { server in
            let first = try connectUnchecked(server)
            let canFastZero = try first.canFastZero()
            for _ in 0..<20 {
                _ = nbdErrno { _ = try first.pread(at: Self.size, byteCount: 512) }
                _ = nbdErrno { try first.pwrite([1, 2, 3], at: Self.size - 1) }
                if canFastZero {
                    _ = nbdErrno { try first.zero(at: 100, byteCount: 10, flags: .fastZero) }
                }
            }
            var model = DiskModel()
            let data = patternBytes(count: 5000, seed: 52)
            try first.pwrite(data, at: 50_000)
            model.write(data, at: 50_000)
            try expectRead(first, matches: model, at: 45_000, byteCount: 15_000)
            let second = try server.connect()
            try expectRead(second, matches: model, at: 45_000, byteCount: 15_000)
        }
    }
}
