// `cowbd serve` on a store a test made itself, as a process the test can stop (SIGTERM, exit
// status checked) or kill (SIGKILL, a crash) and start again on the same store.

import Foundation
import NBDClient
import TestSupport

/// One `cowbd serve STORE` process at a time, listening on `socketPath` (and whatever
/// `extraArguments` add). Ready once a libnbd client completes a handshake with it.
final class ServedStore {
    static let watchdogSeconds = 300
    static let startTimeoutSeconds = 20.0
    static let stopTimeoutSeconds = 30.0

    let storePath: String
    let socketPath: String
    let logPath: String
    let exportName: String
    let extraArguments: [String]
    /// Client settings every `connect` makes first (TLS credentials for a server that
    /// requires TLS), the readiness probe's included.
    var clientSettings: (NBDConnection) throws -> Void = { _ in }
    private var process: Process?
    private var watchdog: Watchdog?

    init(
        store storePath: String, socket socketPath: String, exportName: String = "",
        extraArguments: [String] = []
    ) {
        self.storePath = storePath
        self.exportName = exportName
        self.socketPath = socketPath
        self.logPath = socketPath + ".log"
        self.extraArguments = extraArguments
    }

    deinit { kill() }

    var processIdentifier: Int32 { process?.processIdentifier ?? 0 }
    var isRunning: Bool { process?.isRunning == true }

    /// Starts the server and waits (bounded) until a client can complete a handshake.
    func start() throws {
        precondition(process?.isRunning != true, "server already running")
        try? FileManager.default.removeItem(atPath: socketPath)  // a killed server's
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        try log.seekToEnd()
        let process = Process()
        (process.executableURL, process.arguments) = dyingWithTestProcess(
            try cowbdExecutable(),
            ["serve", storePath, "--listen", "unix:\(socketPath)"] + extraArguments)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = log
        try runWithSignalsUnblocked(process)
        self.process = process
        watchdog = Watchdog(
            processIdentifier: process.processIdentifier, seconds: Self.watchdogSeconds)
        let answered = waitUntil(seconds: Self.startTimeoutSeconds) {
            !process.isRunning || (try? connect()) != nil
        }
        guard answered, process.isRunning else {
            kill()
            throw TestFailure("cowbd serve \(storePath) did not start; log: \(logTail())")
        }
    }

    /// A new libnbd connection to the export; `configure` runs before connecting.
    func connect(_ configure: (NBDConnection) throws -> Void = { _ in }) throws -> NBDConnection {
        let connection = try NBDConnection()
        try connection.setExportName(exportName)
        try clientSettings(connection)
        try configure(connection)
        try connection.connect(unixSocketPath: socketPath)
        return connection
    }

    /// SIGTERM: the server must exit 0 within `stopTimeoutSeconds` and remove its socket.
    func stop() throws {
        guard let process else { throw TestFailure("stop() without a running server") }
        defer { self.process = nil }
        watchdog?.cancel()
        Foundation.kill(process.processIdentifier, SIGTERM)
        guard waitUntil(seconds: Self.stopTimeoutSeconds, { !process.isRunning }) else {
            kill()
            throw TestFailure("cowbd serve ignored SIGTERM for \(Self.stopTimeoutSeconds) s")
        }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw TestFailure(
                "cowbd serve exited with status \(process.terminationStatus) after SIGTERM; "
                    + "log: \(logTail())")
        }
        if FileManager.default.fileExists(atPath: socketPath) {
            throw TestFailure("cowbd serve left its socket \(socketPath)")
        }
    }

    /// SIGKILL and reap, if still running: a crash.
    func kill() {
        watchdog?.cancel()
        guard let process else { return }
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        self.process = nil
    }

    /// Waits for a process something else killed, and forgets it.
    func reap() {
        watchdog?.cancel()
        process?.waitUntilExit()
        process = nil
    }

    /// The last lines of the server's log, for failure messages.
    func logTail() -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(10).joined(separator: "\n")
    }
}

extension NBDConnection {
    /// Every byte of the export, read in 4 MiB requests.
    func allBytes() throws -> [UInt8] {
        let requestByteCount = 4 << 20
        let byteCount = Int(try size())
        var bytes: [UInt8] = []
        bytes.reserveCapacity(byteCount)
        for byteOffset in stride(from: 0, to: byteCount, by: requestByteCount) {
            bytes += try pread(
                at: UInt64(byteOffset), byteCount: min(requestByteCount, byteCount - byteOffset))
        }
        return bytes
    }
}

extension Workspace {
    /// Serves `store`, reads the whole disk and stops the server (checked): the disk as a
    /// client sees it.
    func servedDisk(_ store: String) throws -> [UInt8] {
        let server = ServedStore(
            store: path(store), socket: path("\(store).sock"),
            extraArguments: ["--log-level", "warning"])
        try server.start()
        let connection = try server.connect()
        let bytes = try connection.allBytes()
        try connection.shutdown()
        try server.stop()
        return bytes
    }
}
