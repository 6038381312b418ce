// The server's life: data across a stop and start, SIGTERM with requests in flight, SIGINT,
// and the pid file.

import Foundation
import NBDClient
import Testing

@Suite struct LifecycleTests {
    static let inFlightCount = 64
    static let completionTimeoutMilliseconds: Int32 = 10_000

    @Test func dataSurvivesAServerRestart() throws {
        try withTestServer { server in
            var model = DiskModel()
            do {
                let connection = try server.connect()
                let data = patternBytes(count: 100_000, seed: 80)
                try connection.pwrite(data, at: 4_000_000)
                model.write(data, at: 4_000_000)
                try connection.zero(at: 10_000, byteCount: 20_000)
                model.zero(at: 10_000, byteCount: 20_000)
                // Trimmed once written: a trim leaves chunks the store does not hold alone.
                try connection.pwrite(patternBytes(count: 8192, seed: 81), at: 1 << 20)
                try connection.trim(at: 1 << 20, byteCount: 8192)
                model.zero(at: 1 << 20, byteCount: 8192)
                try connection.flush()
                try connection.shutdown()
            }
            try server.stop()
            try server.start()
            let connection = try server.connect()
            try expectExport(connection, matches: model, "after restart")
        }
    }

    @Test func writesAcknowledgedBeforeSIGTERMSurviveARestart() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var writes: [NBDCookie: (byteOffset: UInt64, bytes: [UInt8])] = [:]
            for slotIndex in 0..<UInt64(Self.inFlightCount) {
                let data = patternBytes(count: 2048, seed: 90 + slotIndex)
                let byteOffset = slotIndex * 65_536 + 1000
                writes[try connection.aioPwrite(data, at: byteOffset)] = (byteOffset, data)
            }
            // Once the first write is acknowledged the server is mid-stream: stop it with the
            // rest in flight. It must finish and flush what it acknowledges.
            var acknowledged: [(byteOffset: UInt64, bytes: [UInt8])] = []
            var completion: AsyncCompletion? = try connection.waitForNextCompletion(
                timeoutMilliseconds: Self.completionTimeoutMilliseconds)
            try server.stop()
            while let finished = completion {
                if case .success = finished.result, let write = writes[finished.cookie] {
                    acknowledged.append(write)
                }
                completion = try? connection.waitForNextCompletion(timeoutMilliseconds: 2000)
            }
            #expect(!acknowledged.isEmpty)
            try server.start()
            let reader = try server.connect()
            for write in acknowledged {
                let bytes = try reader.pread(at: write.byteOffset, byteCount: write.bytes.count)
                #expect(bytes == write.bytes, "acknowledged write at \(write.byteOffset) lost")
            }
        }
    }

    @Test func sigintStopsTheServerWithExitStatusZero() throws {
        let server = try TestServer(ServerOptions())
        let connection = try server.connect()
        #expect(try connection.pread(at: 0, byteCount: 10) == Array(TestImage.bytes[0..<10]))
        try server.stop(signal: SIGINT)
    }

    @Test func pidFileHoldsTheServerPidAndIsRemovedOnSIGTERM() throws {
        var options = ServerOptions()
        options.writesPidFile = true
        let server = try TestServer(options)
        let text = try String(contentsOfFile: server.pidFilePath, encoding: .utf8)
        #expect(
            Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) == server.processIdentifier)
        try server.stop()
        #expect(!FileManager.default.fileExists(atPath: server.pidFilePath))
    }

    @Test func handshakeTimeoutClosesAnIdleHandshakeButNotAnIdleConnection() throws {
        var options = ServerOptions()
        options.extraArguments = ["--handshake-timeout", "1"]
        try withTestServer(options) { server in
            let connection = try server.connect()
            let idle = try RawSocket(unixSocketPath: server.socketPath)
            _ = try idle.receive(18)  // the greeting; then say nothing
            #expect(idle.peerCloses(), "server kept a silent handshake open past the timeout")
            // The timeout covers the handshake only: a connection idle in transmission stays.
            try expectRead(connection, matches: DiskModel(), at: 0, byteCount: 4096)
        }
    }

    @Test func aNewClientAtTheLimitEvictsTheOldestUnfinishedHandshake() throws {
        var options = ServerOptions()
        options.extraArguments = ["--max-connections", "3"]
        try withTestServer(options) { server in
            let attached = try server.connect()
            let oldest = try RawSocket(unixSocketPath: server.socketPath)
            _ = try oldest.receive(18)  // the greeting; then say nothing
            let newer = try RawSocket(unixSocketPath: server.socketPath)
            _ = try newer.receive(18)
            // At the limit, the oldest silent handshake makes room: the new client is served.
            let fresh = try server.connect()
            #expect(oldest.peerCloses(), "the oldest unfinished handshake was not evicted")
            try expectRead(fresh, matches: DiskModel(), at: 0, byteCount: 4096)
            try expectRead(attached, matches: DiskModel(), at: 4096, byteCount: 4096)
        }
    }

    @Test func connectionsBeyondMaxConnectionsAreClosedAndServedOnceOthersLeave() throws {
        var options = ServerOptions()
        options.extraArguments = ["--max-connections", "2"]
        try withTestServer(options) { server in
            var first: NBDConnection? = try server.connect()
            let second = try server.connect()
            #expect(throws: NBDClientError.self) { _ = try server.connect() }
            try first?.shutdown()
            first = nil
            // The server notices the departure asynchronously: retry, bounded.
            var third: NBDConnection?
            _ = waitUntil(seconds: 5) {
                third = try? server.connect()
                return third != nil
            }
            let connected = try #require(third, "no room for a connection after one left")
            try expectRead(connected, matches: DiskModel(), at: 0, byteCount: 4096)
            try expectRead(second, matches: DiskModel(), at: 4096, byteCount: 4096)
        }
    }
}
