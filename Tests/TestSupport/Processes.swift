// Process plumbing shared by the test targets that run the built `cowbd`: finding the binary,
// spawning with signals unblocked and tied to the test process, bounded waiting, the watchdog
// that kills a hung child, and running a command to completion with its output captured.

import Foundation
import Synchronization

/// A plain failure with a message, for conditions outside `#expect`.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The `cowbd` executable built beside the test bundle: the folder of the test executable
/// (`<scratch>/debug/cowbdPackageTests.xctest` on Linux) or one of its parents (the bundle
/// layout on macOS). COWBD_EXECUTABLE overrides.
public func cowbdExecutable() throws -> URL {
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

/// Starts `process` with an empty signal mask. Foundation's `Process.run` spawns on the calling
/// thread and the child inherits that thread's mask; Swift concurrency and Dispatch threads
/// block SIGTERM and SIGINT, so without this a server would never see the SIGTERM of `stop()`.
public func runWithSignalsUnblocked(_ process: Process) throws {
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
public func dyingWithTestProcess(_ executable: URL, _ arguments: [String]) -> (URL, [String]) {
    let setpriv = "/usr/bin/setpriv"
    guard FileManager.default.isExecutableFile(atPath: setpriv) else {
        return (executable, arguments)
    }
    return (
        URL(fileURLWithPath: setpriv), ["--pdeathsig", "KILL", "--", executable.path] + arguments
    )
}

/// Polls `condition` every 10 ms for up to `seconds`; true once it holds.
public func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Kills a process with SIGKILL if it is still alive after `seconds`, unless cancelled.
/// Sendable: its only state is the Mutex-guarded `state`.
public final class Watchdog: Sendable {
    private struct State {
        var cancelled = false
        var fired = false
    }
    private let state = Mutex(State())

    public init(processIdentifier: Int32, seconds: Int) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(seconds)) { [self] in
            let shouldKill = state.withLock { state in
                if state.cancelled { return false }
                state.fired = true
                return true
            }
            if shouldKill { Foundation.kill(processIdentifier, SIGKILL) }
        }
    }

    /// Whether the watchdog killed the process.
    public var fired: Bool { state.withLock { $0.fired } }

    public func cancel() { state.withLock { $0.cancelled = true } }
}

/// How a finished command ended and what it printed.
public struct CommandResult: Sendable {
    /// The exit status, or 128 + the signal number if a signal ended it.
    public let status: Int32
    public let standardOutput: String
    public let standardError: String

    /// The stderr lines, without the empty string after the final newline.
    public var errorLines: [Substring] {
        standardError.split(separator: "\n", omittingEmptySubsequences: false).dropLast(
            standardError.hasSuffix("\n") ? 1 : 0)
    }
}

/// Runs `executable` with `arguments` in `folder` (its current directory, where its output is
/// captured too) to completion, bounded to `seconds`: SIGKILLed and thrown after that.
public func runCommand(
    _ executable: URL, _ arguments: [String], in folder: URL, seconds: Double = 60
) throws -> CommandResult {
    let outputURL = folder.appendingPathComponent(".command-stdout")
    let errorURL = folder.appendingPathComponent(".command-stderr")
    for url in [outputURL, errorURL] {
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
    }
    defer {
        for url in [outputURL, errorURL] { try? FileManager.default.removeItem(at: url) }
    }
    let process = Process()
    (process.executableURL, process.arguments) = dyingWithTestProcess(executable, arguments)
    process.currentDirectoryURL = folder
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = try FileHandle(forWritingTo: outputURL)
    process.standardError = try FileHandle(forWritingTo: errorURL)
    try runWithSignalsUnblocked(process)
    guard waitUntil(seconds: seconds, { !process.isRunning }) else {
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw TestFailure("\(executable.lastPathComponent) \(arguments) ran over \(seconds) s")
    }
    process.waitUntilExit()
    let signalled = process.terminationReason == .uncaughtSignal
    return CommandResult(
        status: signalled ? 128 + process.terminationStatus : process.terminationStatus,
        standardOutput: (try? String(contentsOf: outputURL, encoding: .utf8)) ?? "",
        standardError: (try? String(contentsOf: errorURL, encoding: .utf8)) ?? "")
}

/// A seeded generator, so a failing sequence reproduces from the printed seed.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The seed in environment variable `name`, else one from the clock: a failure prints it, and
/// setting the variable reproduces the run.
public func seedFromEnvironment(_ name: String) -> UInt64 {
    ProcessInfo.processInfo.environment[name].flatMap { UInt64($0) }
        ?? UInt64(Date().timeIntervalSince1970)
}
