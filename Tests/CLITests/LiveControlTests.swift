// The control socket's contract (docs/CONTROL.md): bad input gets one error line and harms
// nobody, other users are refused, a stale socket is replaced and a live one refused; dirty
// bitmaps survive a crash; the metrics endpoint counts what was done.

import Foundation
import NBDClient
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("The control socket and metrics of cowbd serve") struct LiveControlTests {
    @Test func badControlRequestsGetOneErrorLineEachAndTheServerGoesOn() throws {
        let fixture = try LiveFixture(diskByteCount: 4 << 20)
        defer { fixture.server.kill() }
        let connection = try fixture.server.connect()
        try connection.pwrite([UInt8](repeating: 7, count: 4096), at: 0)
        let control = fixture.workspace.path("disk.cow.control")
        var status = stat()
        #expect(lstat(control, &status) == 0 && status.st_mode & 0o777 == 0o600)
        let requests = [
            "not json", "{\"version\":1,\"command\":\"info\"", "[1,2]", "{\"command\":\"info\"}",
            "{\"version\":2,\"command\":\"info\"}", "{\"version\":1}",
            "{\"version\":1,\"command\":\"format-disk\"}",
            "{\"version\":1,\"command\":\"checkpoint\",\"args\":[]}",
            "{\"version\":1,\"command\":\"checkpoint\",\"args\":{\"name\":7}}",
            "{\"version\":1,\"command\":\"checkpoint\",\"args\":{\"name\":\"../x\"}}",
            "{\"version\":1,\"command\":\"delete-checkpoint\",\"args\":{\"name\":\"none\"}}",
            String(repeating: "[", count: 5000), "{\"version\":1.5,\"command\":\"info\"}",
        ]
        let replies = try exchangeLines(
            socketPath: control, Array((requests.joined(separator: "\n") + "\n").utf8),
            lineCount: requests.count)
        #expect(replies.count == requests.count, "\(replies)")
        for (request, reply) in zip(requests, replies) {
            #expect(
                reply.hasPrefix("{\"version\":1,\"ok\":false,\"error\":\""), "\(request) → \(reply)"
            )
        }
        #expect(replies[4].contains("version 2 is not supported"))
        #expect(replies[6].contains("unknown command 'format-disk'"))
        // An overlong line: one error, then the connection is closed.
        let long = try exchangeLines(
            socketPath: control, [UInt8](repeating: UInt8(ascii: "a"), count: 70_000),
            lineCount: 2)
        #expect(long.count == 1 && long[0].contains("longer than"), "\(long)")
        // The clients and the channel are unaffected.
        #expect(try connection.pread(at: 0, byteCount: 4096) == [UInt8](repeating: 7, count: 4096))
        let good = try exchangeLines(
            socketPath: control, Array("{\"version\":1,\"command\":\"list-checkpoints\"}\n".utf8),
            lineCount: 1)
        #expect(good.first?.hasPrefix("{\"version\":1,\"ok\":true,") == true, "\(good)")
        #expect(fixture.server.isRunning)
    }

    @Test func anotherUserIsRefusedByTheSocketModeAndByItsUid() throws {
        guard geteuid() == 0 else { return }  // needs root to run a client as another user
        let fixture = try LiveFixture(diskByteCount: 4 << 20)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        chmod(workspace.folder.path, 0o755)
        let asNobody = [
            "--reuid=65534", "--regid=65534", "--clear-groups", workspace.executable.path,
        ]
        // The mode (0600) stops the connection: the command goes on offline and meets the
        // store itself (not writable by nobody, and locked by the server).
        let byMode = try runCommand(
            URL(fileURLWithPath: "/usr/bin/setpriv"), asNobody + ["checkpoint", "disk.cow", "y"],
            in: workspace.folder)
        expectOneLineError(byMode)
        let explicit = try runCommand(
            URL(fileURLWithPath: "/usr/bin/setpriv"),
            asNobody + ["info", "disk.cow", "--control", "disk.cow.control"], in: workspace.folder)
        expectOneLineError(explicit)
        #expect(explicit.standardError.contains("Permission denied"), "\(explicit.standardError)")
        // With the mode opened up, the server's SO_PEERCRED check refuses the request.
        chmod(workspace.path("disk.cow.control"), 0o666)
        let byUid = try runCommand(
            URL(fileURLWithPath: "/usr/bin/setpriv"), asNobody + ["checkpoint", "disk.cow", "x"],
            in: workspace.folder)
        expectOneLineError(byUid)
        #expect(
            byUid.standardError.contains("uid 65534 is not the server's owner"),
            "\(byUid.standardError)")
        let listing = try workspace.succeed("checkpoint", "disk.cow")
        #expect(!listing.contains("x:") && !listing.contains("y:"), "\(listing)")
    }

    @Test func aStaleControlSocketIsReplacedAndALiveOneRefused() throws {
        let fixture = try LiveFixture(diskByteCount: 4 << 20)
        defer { fixture.server.kill() }
        let workspace = fixture.workspace
        fixture.server.kill()  // SIGKILL: the socket file stays behind
        #expect(FileManager.default.fileExists(atPath: workspace.path("disk.cow.control")))
        // Offline commands see nobody answers and work on the store itself.
        #expect(try workspace.succeed("info", "disk.cow").contains("chunk size"))
        try fixture.server.start()
        #expect(try workspace.succeed("info", "disk.cow").contains("served by:"))
        // A second server wanting the same control socket is refused, with the reason.
        try workspace.succeed("create", "other.cow", "--base", "base.img")
        let second = try workspace.cowbd(
            "serve", "other.cow", "--listen", "unix:" + workspace.path("other.sock"),
            "--control", "disk.cow.control")
        expectOneLineError(second)
        #expect(second.standardError.contains("a server is running on this control socket"))
        #expect(try workspace.succeed("info", "disk.cow").contains("served by:"))
    }

    @Test func dirtyBitmapsMatchTheWrittenChunksAndCountEveryHeldChunkAfterACrash() throws {
        let fixture = try LiveFixture(diskByteCount: 8 << 20)
        defer { fixture.server.kill() }
        let connection = try fixture.server.connect()
        try connection.pwrite([UInt8](repeating: 1, count: 8192), at: 0)  // chunks 0, 1
        try fixture.workspace.succeed("checkpoint", "disk.cow", "cp")
        #expect(try fixture.dirtyChunks(since: "cp") == [])
        try connection.pwrite([UInt8](repeating: 2, count: 100), at: 5 * 4096 + 10)  // chunk 5
        try connection.zero(at: 1 << 20, byteCount: 3 * 4096)  // chunks 256-258
        try connection.pwrite([UInt8](repeating: 3, count: 4096), at: 4096)  // chunk 1 again
        let expected: Set<Int> = [1, 5, 256, 257, 258]
        #expect(try fixture.dirtyChunks(since: "cp") == expected)
        #expect(try fixture.dirtyChunksByNbdinfo(since: "cp") == expected)
        // A context per checkpoint, listed like qemu-nbd's.
        let lister = try NBDConnection()
        try lister.setOptMode(true)
        try lister.connect(unixSocketPath: fixture.server.socketPath)
        #expect(try lister.optListMetaContext().contains("qemu:dirty-bitmap:cp"))
        try connection.flush()
        fixture.server.kill()  // a crash: every held chunk now counts as changed
        try fixture.server.start()
        #expect(try fixture.dirtyChunks(since: "cp") == expected.union([0]))
        #expect(try fixture.dirtyChunksByNbdinfo(since: "cp") == expected.union([0]))
    }

    @Test func aCleanStopAfterLiveCheckpointsIsNotTakenForACrash() throws {
        let fixture = try LiveFixture(diskByteCount: 4 << 20, serveArguments: ["--metrics", "0"])
        defer { fixture.server.kill() }
        let connection = try fixture.server.connect()
        try connection.pwrite([UInt8](repeating: 1, count: 4096), at: 0)
        try fixture.workspace.succeed("checkpoint", "disk.cow", "cp")
        try connection.pwrite([UInt8](repeating: 2, count: 4096), at: 8192)
        try fixture.server.stop()
        let listing = try fixture.workspace.succeed("checkpoint", "disk.cow")
        #expect(!listing.contains("not closed cleanly"), "\(listing)")
        #expect(listing.contains("cp: ") && listing.contains("1 chunks changed since"))
    }

    @Test func metricsParseAndCountTheRequestsMade() throws {
        let port = UInt16.random(in: 20_000...60_000)
        let fixture = try LiveFixture(
            diskByteCount: 4 << 20, serveArguments: ["--metrics", "127.0.0.1:\(port)"])
        defer { fixture.server.kill() }
        let before = try parsePrometheusText(try httpGet(port: port, path: "/metrics").body)
        let connection = try fixture.server.connect()
        for index in 0..<7 {
            try connection.pwrite([UInt8](repeating: 9, count: 1000), at: UInt64(index * 4096))
        }
        for index in 0..<5 { _ = try connection.pread(at: UInt64(index * 512), byteCount: 512) }
        try connection.flush()
        try connection.flush()
        let (status, body) = try httpGet(port: port, path: "/metrics")
        #expect(status == "HTTP/1.1 200 OK")
        let after = try parsePrometheusText(body)
        func delta(_ key: String) -> Double { (after[key] ?? -1) - (before[key] ?? 0) }
        #expect(delta("cowbd_requests_total{command=\"write\"}") == 7)
        #expect(delta("cowbd_requests_total{command=\"read\"}") == 5)
        #expect(delta("cowbd_requests_total{command=\"flush\"}") == 2)
        #expect(delta("cowbd_request_bytes_total{command=\"write\"}") == 7000)
        #expect(delta("cowbd_request_bytes_total{command=\"read\"}") == 2560)
        #expect(delta("cowbd_request_duration_seconds_count{command=\"flush\"}") == 2)
        #expect(delta("cowbd_request_duration_seconds_count{command=\"write\"}") == 7)
        #expect(delta("cowbd_request_errors_total{errno=\"EIO\"}") == 0)
        #expect(delta("cowbd_copy_ups_total") == 7)
        #expect(after["cowbd_chunks_written"] == 7)
        #expect((after["cowbd_connections"] ?? 0) >= 1)  // ours (the readiness probe's may linger)
        let reads = delta("cowbd_read_cache_hits_total") + delta("cowbd_read_cache_misses_total")
        #expect(reads == 5)
        #expect(try httpGet(port: port, path: "/other").status == "HTTP/1.1 404 Not Found")
        let info = try fixture.workspace.succeed("info", "disk.cow")
        #expect(info.contains("requests:") && info.contains("write 7"), "\(info)")
    }
}
