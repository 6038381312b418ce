// A scratch folder for one CLI test and the built `cowbd` run inside it, as a user would run
// it: relative paths, captured stdout and stderr, the exit status, --json output parsed.

import Foundation
import TestSupport
import Testing

/// A fresh folder, removed when the value goes away; `cowbd` runs with it as current directory.
final class Workspace {
    let folder: URL
    let executable: URL

    init() throws {
        executable = try cowbdExecutable()
        let parent = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : "/tmp"
        folder = URL(fileURLWithPath: parent).appendingPathComponent(
            "cowbd-cli-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: folder) }

    /// The absolute path of `name` in the folder.
    func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    /// Runs `cowbd ARGUMENTS` to completion (bounded).
    @discardableResult
    func cowbd(_ arguments: String...) throws -> CommandResult {
        try runCommand(executable, arguments, in: folder)
    }

    /// Runs `cowbd ARGUMENTS` to completion (bounded).
    @discardableResult
    func cowbd(_ arguments: [String]) throws -> CommandResult {
        try runCommand(executable, arguments, in: folder)
    }

    /// Runs `cowbd ARGUMENTS`, requires exit 0 and returns its stdout.
    @discardableResult
    func succeed(_ arguments: String...) throws -> String {
        let result = try runCommand(executable, arguments, in: folder)
        guard result.status == 0 else {
            throw TestFailure(
                "cowbd \(arguments.joined(separator: " ")) exited \(result.status): "
                    + result.standardError)
        }
        return result.standardOutput
    }

    /// Runs `cowbd ARGUMENTS --json`-style commands and parses their stdout as one JSON object.
    func json(_ arguments: String...) throws -> [String: Any] {
        let result = try runCommand(executable, arguments, in: folder)
        guard result.status == 0,
            let object = try JSONSerialization.jsonObject(
                with: Data(result.standardOutput.utf8)) as? [String: Any]
        else {
            throw TestFailure(
                "cowbd \(arguments.joined(separator: " ")) exited \(result.status), printed "
                    + "\(result.standardOutput.prefix(300)) \(result.standardError.prefix(300))")
        }
        return object
    }

    /// Writes `byteCount` seeded pseudo-random bytes to `name`.
    func writeRandomFile(_ name: String, byteCount: Int, seed: UInt64) throws {
        var generator = SplitMix64(seed: seed)
        var bytes = [UInt8](repeating: 0, count: byteCount)
        for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: generator.next()) }
        try Data(bytes).write(to: folder.appendingPathComponent(name))
    }

    /// The file's bytes, or nil when it does not exist: for "unchanged" checks.
    func contents(_ name: String) -> Data? { FileManager.default.contents(atPath: path(name)) }

    /// The folder's entries whose names match: a leftover store or temporary file.
    func entries(where matches: (String) -> Bool) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder.path).filter(matches)
    }

    /// Whether `name` exists in the folder.
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }

    /// Copies `source` to `destination` (replacing it), keeping holes: `cp --sparse=always`.
    func copy(_ source: String, to destination: String) throws {
        let result = try runCommand(
            URL(fileURLWithPath: "/bin/cp"), ["--sparse=always", source, destination], in: folder)
        guard result.status == 0 else {
            throw TestFailure("cp \(source) \(destination): \(result.standardError)")
        }
    }

    /// Runs `bash -c SCRIPT` in the folder, with `$COWBD` set to the executable: pipes (bash
    /// for `set -o pipefail`).
    func shell(_ script: String) throws -> CommandResult {
        try runCommand(
            URL(fileURLWithPath: "/bin/bash"),
            ["-c", "COWBD=\"$1\"; " + script, "sh", executable.path], in: folder)
    }

    /// Starts `cowbd ARGUMENTS`, kills it with SIGKILL after `milliseconds` and reaps it: a crash
    /// at that instant. False if it had finished by then.
    @discardableResult
    func cowbdKilled(afterMilliseconds milliseconds: Int, _ arguments: [String]) throws -> Bool {
        let process = Process()
        (process.executableURL, process.arguments) = dyingWithTestProcess(executable, arguments)
        process.currentDirectoryURL = folder
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try runWithSignalsUnblocked(process)
        usleep(useconds_t(milliseconds * 1000))
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal
    }

    /// How long `cowbd ARGUMENTS` takes to succeed, in milliseconds: bounds the kill instants.
    func millisecondsToSucceed(_ arguments: String...) throws -> Int {
        let start = DispatchTime.now().uptimeNanoseconds
        let result = try runCommand(executable, arguments, in: folder)
        guard result.status == 0 else {
            throw TestFailure("cowbd \(arguments) exited \(result.status): \(result.standardError)")
        }
        return Int((DispatchTime.now().uptimeNanoseconds - start) / 1_000_000)
    }
}

/// Requires a failed command: exit status `status` (any non-zero when nil) and exactly one line
/// on stderr, starting "cowbd: ".
func expectOneLineError(
    _ result: CommandResult, status: Int32? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    if let status {
        #expect(result.status == status, "\(result.standardError)", sourceLocation: sourceLocation)
    } else {
        #expect(result.status != 0, "succeeded", sourceLocation: sourceLocation)
    }
    #expect(
        result.errorLines.count == 1 && result.standardError.hasPrefix("cowbd: "),
        "stderr: \(result.standardError.prefix(300))", sourceLocation: sourceLocation)
}
