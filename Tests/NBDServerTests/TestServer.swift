// Runs a real server for one test: a temp folder with the base image and store, `cowbd serve`
// on a Unix socket, and a bounded, checked stop. Set NBD_TEST_SERVER=nbdkit to run the same
// tests against nbdkit's file plugin (a development aid; cowbd-only behaviour then fails).

import Foundation
import NBDClient
import Synchronization

/// How to start the server for one test.
struct ServerOptions {
    var exportName = "disk"
    var description: String? = "cowbd test disk"
    var readOnly = false
    /// Passed to `cowbd create --chunk-size`; nil keeps cowbd's default (4 KiB).
    var chunkByteCount: Int? = nil
    /// Passes `--pid-file` (at `TestServer.pidFilePath`).
    var writesPidFile = false
    /// More `cowbd serve` options, such as `--max-connections 2`.
    var extraArguments: [String] = []
    /// A base of this many zero bytes (a sparse file) instead of `TestImage`.
    var zeroBaseByteCount: UInt64? = nil
}

/// Runs `body` with a started server, and always stops it: checked (SIGTERM, exit status 0)
/// when `body` returns, killed when it throws.
func withTestServer<Result>(
    _ options: ServerOptions = ServerOptions(), _ body: (TestServer) throws -> Result
) throws -> Result {
    let server = try TestServer(options)
    let result: Result
    do {
        result = try body(server)
    } catch {
        let hung = server.watchdogFired
        // A crashing Swift server prints a backtrace before it exits: give it a moment.
        let died = waitUntil(seconds: 2) { !server.isRunning }
        server.kill()
        if hung { throw TestFailure("server hung: the watchdog killed it (\(error))") }
        if died { throw TestFailure("\(error); the server died: \(server.crashReport())") }
        throw error
    }
    try server.stop()
    return result
}

/// One server process and its files. `deinit` kills a process still running and removes the
/// folder, so no test leaves a server behind.
final class TestServer {
    /// Longest a server may run before the watchdog kills it, so a hung server fails the test
    /// (libnbd's blocking calls then return) instead of hanging the run.
    static let watchdogSeconds = 120
    static let startTimeoutSeconds = 10.0
    /// A bound against a hung shutdown, not a speed check: a server with 32 connections that
    /// just wrote their largest payloads takes a few seconds to stop under TSan.
    static let stopTimeoutSeconds = 30.0

    let options: ServerOptions
    let folder: URL
    var basePath: String { folder.appendingPathComponent("base.img").path }
    var storePath: String { folder.appendingPathComponent("disk.cow").path }
    var socketPath: String { folder.appendingPathComponent("nbd.sock").path }
    var stdoutPath: String { folder.appendingPathComponent("stdout.txt").path }
    var stderrPath: String { folder.appendingPathComponent("stderr.txt").path }
    var pidFilePath: String { folder.appendingPathComponent("cowbd.pid").path }
    /// The running server's pid, 0 when stopped.
    var processIdentifier: Int32 { process?.processIdentifier ?? 0 }
    /// The first line the server printed on stdout: its NBD URI.
    private(set) var printedURI = ""
    private var process: Process?
    private var watchdog: Watchdog?

    init(_ options: ServerOptions) throws {
        self.options = options
        folder = URL(fileURLWithPath: "/tmp").appendingPathComponent(
            "cowbd-nbd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        if let zeroBaseByteCount = options.zeroBaseByteCount {
            guard FileManager.default.createFile(atPath: basePath, contents: nil) else {
                throw TestFailure("cannot create base image \(basePath)")
            }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: basePath))
            defer { try? handle.close() }
            try handle.truncate(atOffset: zeroBaseByteCount)
        } else {
            try TestImage.write(to: basePath)
        }
        try createStore()
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: folder)
    }

    /// Opens a connection to the export (or `exportName`); `configure` runs before connecting.
    func connect(
        exportName: String? = nil, _ configure: (NBDConnection) throws -> Void = { _ in }
    ) throws -> NBDConnection {
        let connection = try NBDConnection()
        try connection.setExportName(exportName ?? options.exportName)
        try configure(connection)
        try connection.connect(unixSocketPath: socketPath)
        return connection
    }

    /// Starts the server and waits (bounded) until its socket exists and it printed its URI.
    func start() throws {
        precondition(process?.isRunning != true, "server already running")
        if TestServer.usesNBDKit { try? FileManager.default.removeItem(atPath: socketPath) }
        for path in [stdoutPath, stderrPath] {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        let process = Process()
        let (executable, arguments) = try serveCommand()
        (process.executableURL, process.arguments) = dyingWithTestProcess(executable, arguments)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try runWithSignalsUnblocked(process)
        self.process = process
        watchdog = Watchdog(
            processIdentifier: process.processIdentifier, seconds: Self.watchdogSeconds)
        // cowbd prints its URI once it listens. nbdkit 1.32 cannot (no --print-uri), so it is
        // probed with a connection instead.
        let ready = waitUntil(seconds: Self.startTimeoutSeconds) {
            guard process.isRunning else { return true }
            guard FileManager.default.fileExists(atPath: socketPath) else { return false }
            if TestServer.usesNBDKit { return (try? RawSocket(unixSocketPath: socketPath)) != nil }
            return stdoutLine() != nil
        }
        guard ready, process.isRunning else {
            let what =
                process.isRunning ? "did not start within \(Self.startTimeoutSeconds) s" : "exited"
            kill()
            throw TestFailure(
                "server \(what) (\(arguments.joined(separator: " "))); stderr: \(serverStderr())")
        }
        printedURI = stdoutLine() ?? "nbd+unix:///\(options.exportName)?socket=\(socketPath)"
    }

    /// Sends `signal` (SIGTERM or SIGINT) and requires exit status 0 within
    /// `stopTimeoutSeconds` and the socket removed; kills the process (SIGKILL) and throws
    /// otherwise.
    func stop(signal: Int32 = SIGTERM) throws {
        guard let process else { throw TestFailure("stop() without a running server") }
        defer { self.process = nil }
        watchdog?.cancel()
        if watchdog?.fired == true {
            throw TestFailure("server hung: killed by the watchdog; stderr: \(serverStderr())")
        }
        guard process.isRunning else {
            throw TestFailure(
                "server had exited (status \(process.terminationStatus)) before SIGTERM; "
                    + "stderr: \(serverStderr())")
        }
        Foundation.kill(process.processIdentifier, signal)
        guard waitUntil(seconds: Self.stopTimeoutSeconds, { !process.isRunning }) else {
            kill()
            throw TestFailure(
                "server ignored signal \(signal) for \(Self.stopTimeoutSeconds) s; killed")
        }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw TestFailure(
                "server exited with status \(process.terminationStatus) "
                    + "(\(process.terminationReason == .exit ? "exit" : "signal")) after signal \(signal); "
                    + "stderr: \(serverStderr())")
        }
        // nbdkit 1.32 leaves its socket; cowbd must remove it.
        if !TestServer.usesNBDKit && FileManager.default.fileExists(atPath: socketPath) {
            throw TestFailure("server left its socket \(socketPath) behind after signal \(signal)")
        }
    }

    /// SIGKILL and reap, if still running. Used on failure paths only.
    func kill() {
        watchdog?.cancel()
        guard let process, process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: socketPath)
    }

    /// Whether the watchdog had to kill the server.
    var watchdogFired: Bool { watchdog?.fired == true }

    /// Whether the server process is alive.
    var isRunning: Bool { process?.isRunning == true }

    /// The lines of the server's stderr that say why it crashed, or its last lines.
    func crashReport() -> String {
        let lines = serverStderr().split(separator: "\n")
        let markers = ["Fatal error", "Precondition failed", "Assertion failed", "Crash"]
        let reasons = lines.filter { line in markers.contains { line.contains($0) } }
        return (reasons.isEmpty ? Array(lines.suffix(10)) : reasons).joined(separator: "\n")
    }

    /// What the server wrote on stderr so far, for failure messages.
    func serverStderr() -> String {
        (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "(unreadable)"
    }

    private func stdoutLine() -> String? {
        guard let text = try? String(contentsOfFile: stdoutPath, encoding: .utf8),
            let newline = text.firstIndex(of: "\n")
        else { return nil }
        return String(text[..<newline])
    }

    private func serveCommand() throws -> (URL, [String]) {
        if TestServer.usesNBDKit {
            var arguments = [
                "-U", socketPath, "-f", "--exit-with-parent", "-e",
                options.exportName,
            ]
            if options.readOnly { arguments.append("-r") }
            if options.writesPidFile { arguments += ["-P", pidFilePath] }
            return (URL(fileURLWithPath: "/usr/bin/nbdkit"), arguments + ["file", storePath])
        }
        var arguments = [
            "serve", storePath, "--listen", "unix:\(socketPath)", "--export-name",
            options.exportName,
        ]
        if let description = options.description { arguments += ["--description", description] }
        if options.readOnly { arguments.append("--read-only") }
        if options.writesPidFile { arguments += ["--pid-file", pidFilePath] }
        return (try TestServer.cowbdExecutable(), arguments + options.extraArguments)
    }

    private func createStore() throws {
        if TestServer.usesNBDKit {
            try runToCompletion(
                URL(fileURLWithPath: "/bin/cp"), ["--sparse=always", basePath, storePath])
            return
        }
        var arguments = ["create", storePath, "--base", basePath]
        if let chunkByteCount = options.chunkByteCount {
            arguments += ["--chunk-size", String(chunkByteCount)]
        }
        try runToCompletion(try TestServer.cowbdExecutable(), arguments)
        guard FileManager.default.fileExists(atPath: storePath) else {
            throw TestFailure("cowbd \(arguments.joined(separator: " ")) made no store")
        }
    }
}
