// A folder with the test base image and a store over it, and cowbd run to completion in it:
// for tests of how `cowbd serve` runs as a process (socket activation, --run), where the
// process's environment, descriptors and exit status are what is tested.

import Foundation

/// How a cowbd process ended, and what it printed.
struct CommandResult {
    /// The exit status, or the signal number when `killedBySignal`.
    let status: Int32
    let killedBySignal: Bool
    let standardOutput: String
    let standardError: String

    var summary: String {
        "\(killedBySignal ? "killed by signal" : "exit status") \(status); "
            + "stderr: \(standardError.prefix(600))"
    }
}

/// A temporary folder with `base.img` (TestImage) and `disk.cow` over it; removed in `deinit`.
final class CommandFixture {
    static let timeoutSeconds = 60.0

    let folder: URL
    let cowbd: URL
    var storePath: String { path("disk.cow") }
    var basePath: String { path("base.img") }

    init() throws {
        cowbd = try TestServer.cowbdExecutable()
        folder = URL(fileURLWithPath: "/tmp").appendingPathComponent(
            "cowbd-process-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try TestImage.write(to: basePath)
        let created = try run(cowbd, ["create", storePath, "--base", basePath])
        guard created.status == 0, !created.killedBySignal else {
            throw TestFailure("cowbd create failed: \(created.summary)")
        }
    }

    deinit { try? FileManager.default.removeItem(at: folder) }

    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Runs cowbd with `arguments` in the folder, with `environment` added to the test's own.
    func runCowbd(_ arguments: [String], environment: [String: String] = [:]) throws
        -> CommandResult
    {
        try run(cowbd, arguments, environment: environment)
    }

    /// Starts `executable` (in the folder, killed with the test process) and waits for it, up
    /// to `timeoutSeconds`; `whileRunning` gets its pid first. Throws if it runs over.
    func run(
        _ executable: URL, _ arguments: [String], environment: [String: String] = [:],
        whileRunning: (Int32) throws -> Void = { _ in }
    ) throws -> CommandResult {
        let process = Process()
        (process.executableURL, process.arguments) = dyingWithTestProcess(executable, arguments)
        process.currentDirectoryURL = folder
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let outputPath = path("stdout.txt")
        let errorPath = path("stderr.txt")
        for path in [outputPath, errorPath] {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: outputPath)
        process.standardError = FileHandle(forWritingAtPath: errorPath)
        try runWithSignalsUnblocked(process)
        defer {
            if process.isRunning {
                Foundation.kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        try whileRunning(process.processIdentifier)
        guard waitUntil(seconds: Self.timeoutSeconds, { !process.isRunning }) else {
            throw TestFailure("\(executable.lastPathComponent) \(arguments) ran over 60 s")
        }
        return CommandResult(
            status: process.terminationStatus,
            killedBySignal: process.terminationReason == .uncaughtSignal,
            standardOutput: (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "",
            standardError: (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "")
    }

    /// The bytes of a file in the folder.
    func bytes(of name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: folder.appendingPathComponent(name)))
    }
}
