// Process plumbing for TestServer: finding the cowbd binary, running a command to completion,
// bounded waiting, and the watchdog that kills a hung server.

import Foundation
import Synchronization

extension TestServer {
    /// NBD_TEST_SERVER=nbdkit runs the tests against nbdkit instead of cowbd.
    static var usesNBDKit: Bool {
        ProcessInfo.processInfo.environment["NBD_TEST_SERVER"] == "nbdkit"
    }

    /// The `cowbd` executable built beside the test bundle: the folder of the test executable
    /// (`<scratch>/debug/cowbdPackageTests.xctest` on Linux) or one of its parents (the bundle
    /// layout on macOS). COWBD_EXECUTABLE overrides.
    static func cowbdExecutable() throws -> URL {
        if let path = ProcessInfo.processInfo.environment["COWBD_EXECUTABLE"] {
            return URL(fileURLWithPath: path)
        }
        var folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = folder.appendingPathComponent("cowbd")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            folder = folder.deletingLastPathComponent()
        }
        throw TestFailure(
            "no cowbd executable beside \(CommandLine.arguments[0]); build it with "
                + "`swift build --build-tests` or set COWBD_EXECUTABLE")
    }

    /// Runs a short command (bounded to 60 s) and throws unless it exits 0.
    func runToCompletion(_ executable: URL, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let errorPath = folder.appendingPathComponent("command-stderr.txt").path
        _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: errorPath)
        try runWithSignalsUnblocked(process)
        guard waitUntil(seconds: 60, { !process.isRunning }) else {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestFailure("\(executable.lastPathComponent) \(arguments) ran over 60 s; killed")
        }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let message = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
            throw TestFailure(
                "\(executable.path) \(arguments.joined(separator: " ")) exited with status "
                    + "\(process.terminationStatus): \(message)")
        }
    }
}

/// Starts `process` with an empty signal mask. Foundation's `Process.run` spawns on the calling
/// thread and the child inherits that thread's mask; Swift concurrency and Dispatch threads
/// block SIGTERM and SIGINT, so without this a server would never see the SIGTERM of `stop()`.
func runWithSignalsUnblocked(_ process: Process) throws {
    var empty = sigset_t()
    var saved = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, &saved)
    defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
    try process.run()
}

/// Wraps a command in `setpriv --pdeathsig KILL` (util-linux), which execs it in place (same
/// pid) after asking the kernel to SIGKILL it when the spawning thread dies: a crashed test run
/// leaves no server behind. Safe because tests are synchronous, so the spawning thread lives
/// until the test has stopped its server. Without setpriv the command runs as is.
func dyingWithTestProcess(_ executable: URL, _ arguments: [String]) -> (URL, [String]) {
    let setpriv = "/usr/bin/setpriv"
    guard FileManager.default.isExecutableFile(atPath: setpriv) else {
        return (executable, arguments)
    }
    return (
        URL(fileURLWithPath: setpriv), ["--pdeathsig", "KILL", "--", executable.path] + arguments
    )
}

/// Polls `condition` every 10 ms for up to `seconds`; true once it holds.
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Kills a server process with SIGKILL if it is still alive after `seconds`, unless cancelled.
/// Sendable: its only state is the Mutex-guarded `state`.
final class Watchdog: Sendable {
    private struct State {
        var cancelled = false
        var fired = false
    }
    private let state = Mutex(State())

    init(processIdentifier: Int32, seconds: Int) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(seconds)) { [self] in
            let shouldKill = state.withLock { state in
                if state.cancelled { return false }
                state.fired = true
                return true
            }
            if shouldKill { Foundation.kill(processIdentifier, SIGKILL) }
        }
    }

    /// Whether the watchdog killed the server.
    var fired: Bool { state.withLock { $0.fired } }

    func cancel() { state.withLock { $0.cancelled = true } }
}
