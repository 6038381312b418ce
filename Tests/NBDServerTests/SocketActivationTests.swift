// systemd socket activation (LISTEN_PID/LISTEN_FDS): libnbd's
// nbd_connect_systemd_socket_activation and systemd's own systemd-socket-activate start cowbd
// on sockets they listen on; variables meant for another process are ignored and unset;
// descriptors that are not listening sockets, and --listen beside passed sockets, are refused.

import Foundation
import NBDClient
import NBDServer
import Testing

@Suite struct SocketActivationTests {
    @Test func libnbdStartsCowbdOnAPassedSocketAndDataSurvivesItsStop() throws {
        let fixture = try CommandFixture()
        var model = DiskModel()
        let patch = patternBytes(count: 70_000, seed: 180)
        do {
            let connection = try NBDConnection()
            let (executable, arguments) = dyingWithTestProcess(
                fixture.cowbd,
                ["serve", fixture.storePath, "--export-name", "vm", "--log-level", "warning"])
            try connection.connect(systemdSocketActivation: [executable.path] + arguments)
            try expectExport(connection, matches: model, "served on the passed socket")
            try connection.pwrite(patch, at: 1_000_000)
            model.write(patch, at: 1_000_000)
            try connection.flush()
        }  // closing the handle sends cowbd SIGTERM and waits for it
        let connection = try NBDConnection()
        try connection.connect(
            systemdSocketActivation: [
                fixture.cowbd.path, "serve", fixture.storePath, "--log-level", "warning",
            ])
        try expectExport(connection, matches: model, "after the first server stopped")
    }

    @Test func systemdSocketActivateServesEveryPassedSocketAndLeavesThemInPlace() throws {
        let activate = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        guard FileManager.default.isExecutableFile(atPath: activate.path) else {
            throw TestFailure("systemd-socket-activate is missing (Debian package systemd)")
        }
        let fixture = try CommandFixture()
        let socketPaths = [fixture.path("first.sock"), fixture.path("second.sock")]
        let arguments =
            socketPaths.flatMap { ["--listen", $0] }
            + [fixture.cowbd.path, "serve", fixture.storePath, "--export-name", "vm"]
        let result = try fixture.run(activate, arguments) { processID in
            guard waitUntil(seconds: 10, { socketPaths.allSatisfy(isListening) }) else {
                throw TestFailure("systemd-socket-activate did not listen")
            }
            // The first connection starts cowbd (systemd-socket-activate execs it in place).
            for socketPath in socketPaths {
                let connection = try NBDConnection()
                try connection.setExportName("vm")
                try connection.connect(unixSocketPath: socketPath)
                #expect(try connection.size() == UInt64(TestImage.byteCount))
                try connection.shutdown()
            }
            kill(processID, SIGTERM)
        }
        #expect(result.status == 0 && !result.killedBySignal, "\(result.summary)")
        for socketPath in socketPaths {
            #expect(result.standardOutput.contains("nbd+unix:///vm?socket=\(socketPath)\n"))
            #expect(isSocket(socketPath), "\(socketPath): a passed socket must stay in place")
        }
    }

    /// systemd across `systemctl restart`: the supervisor keeps the socket while one cowbd stops
    /// and the next starts, and a client of the second finds the first one's writes.
    @Test func aPassedSocketOutlivesCowbdSoTheNextOneServesIt() throws {
        let activate = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        guard FileManager.default.isExecutableFile(atPath: activate.path) else {
            throw TestFailure("systemd-socket-activate is missing (Debian package systemd)")
        }
        let fixture = try CommandFixture()
        let socketPath = fixture.path("held.sock")
        let pidPath = fixture.path("cowbd.pid")
        let serve =
            #"sh -c 'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" serve disk.cow "#
            + #"--pid-file cowbd.pid --log-level warning' "$0""#
        var model = DiskModel()
        let result = try fixture.run(
            activate,
            ["--listen", socketPath, "/bin/sh", "-c", "\(serve); \(serve)", fixture.cowbd.path]
        ) { _ in
            guard waitUntil(seconds: 10, { isListening(socketPath) }) else {
                throw TestFailure("systemd-socket-activate did not listen")
            }
            var previousPID = ""
            for round in 0..<2 {
                let connection = try NBDConnection()
                do {
                    try connection.connect(unixSocketPath: socketPath)
                } catch {
                    throw TestFailure("cowbd number \(round + 1): \(error)")
                }
                try expectExport(connection, matches: model, "cowbd number \(round + 1)")
                let patch = patternBytes(count: 5000, seed: 190 + UInt64(round))
                try connection.pwrite(patch, at: UInt64(round) * 100_000)
                model.write(patch, at: UInt64(round) * 100_000)
                try connection.flush()
                try connection.shutdown()
                var pid = ""
                guard
                    waitUntil(
                        seconds: 10,
                        {
                            pid = (try? String(contentsOfFile: pidPath, encoding: .utf8)) ?? ""
                            return !pid.isEmpty && pid != previousPID
                        }),
                    let processID = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines))
                else { throw TestFailure("no pid file from cowbd number \(round + 1)") }
                previousPID = pid
                kill(processID, SIGTERM)
                guard waitUntil(seconds: 10, { kill(processID, 0) != 0 }) else {
                    throw TestFailure("cowbd number \(round + 1) did not stop on SIGTERM")
                }
                #expect(isSocket(socketPath), "the passed socket must outlive cowbd")
            }
        }
        #expect(result.status == 0 && !result.killedBySignal, "\(result.summary)")
    }

    @Test func variablesForAnotherProcessAreIgnoredAndUnset() throws {
        let fixture = try CommandFixture()
        let result = try fixture.runCowbd(
            [
                "serve", fixture.storePath, "--run",
                #"echo "[$LISTEN_PID][$LISTEN_FDS][$LISTEN_FDNAMES]"; nbdinfo --size "$uri""#,
            ],
            environment: ["LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "nbd"])
        #expect(result.status == 0, "\(result.summary)")
        #expect(result.standardOutput == "[][][]\n\(TestImage.byteCount)\n")
    }

    @Test func passedDescriptorThatIsNotAListeningSocketIsRefused() throws {
        let fixture = try CommandFixture()
        let result = try fixture.run(
            URL(fileURLWithPath: "/bin/sh"),
            [
                "-c", #"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" serve disk.cow 3<base.img"#,
                fixture.cowbd.path,
            ])
        #expect(result.status == 1, "\(result.summary)")
        #expect(
            result.standardError == "cowbd: descriptor 3 from LISTEN_FDS: getsockopt failed: "
                + "Socket operation on non-socket\n")
    }

    @Test func listenBesidePassedSocketsIsRefused() throws {
        let fixture = try CommandFixture()
        let result = try fixture.run(
            URL(fileURLWithPath: "/bin/sh"),
            [
                "-c",
                #"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" serve disk.cow --listen unix:x.sock 3<base.img"#,
                fixture.cowbd.path,
            ])
        #expect(result.status == 1, "\(result.summary)")
        #expect(
            result.standardError.hasPrefix("cowbd: --listen cannot be used with sockets passed"))
        #expect(!FileManager.default.fileExists(atPath: fixture.path("x.sock")))
    }

    @Test func listenVariablesFollowSdListenFds() throws {
        func descriptors(_ pid: String?, _ count: String?) throws -> [Int32] {
            try SocketActivation.descriptors(listenPID: pid, listenFDs: count, processID: 4242)
        }
        #expect(try descriptors("4242", "2") == [3, 4])
        #expect(try descriptors("4242", "0") == [])
        #expect(try descriptors(nil, "2") == [])
        #expect(try descriptors("4242", nil) == [])
        #expect(try descriptors("4243", "2") == [])
        #expect(try descriptors("4243", "many") == [], "another process's value is not read")
        for (pid, count) in [("x", "1"), ("0", "1"), ("-1", "1"), ("4242", "-1"), ("4242", "65")] {
            #expect(throws: ServerError.self, "LISTEN_PID=\(pid) LISTEN_FDS=\(count)") {
                try descriptors(pid, count)
            }
        }
    }
}

/// Whether `path` is a unix socket.
private func isSocket(_ path: String) -> Bool {
    var status = stat()
    return lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK
}

/// Whether a socket bound to `path` listens: its file appears at bind(), before listen(), and
/// a connection in between is refused. /proc/net/unix gives each socket's flags (0x10000,
/// __SO_ACCEPTCON, once it listens) and path, last.
private func isListening(_ path: String) -> Bool {
    guard let table = try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8) else {
        return false
    }
    return table.split(separator: "\n").contains { line in
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        return fields.count >= 8 && fields[7] == path && fields[3] == "00010000"
    }
}
