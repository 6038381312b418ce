// Process plumbing for TestServer: which server to run, and running a command to completion.
// Spawning, waiting and the watchdog are TestSupport's, shared with the CLI tests.

import Foundation
import TestSupport

extension TestServer {
    /// NBD_TEST_SERVER=nbdkit runs the tests against nbdkit instead of cowbd.
    static var usesNBDKit: Bool {
        ProcessInfo.processInfo.environment["NBD_TEST_SERVER"] == "nbdkit"
    }

    /// The `cowbd` executable built beside the test bundle (COWBD_EXECUTABLE overrides).
    static func cowbdExecutable() throws -> URL { try TestSupport.cowbdExecutable() }

    /// Runs a short command (bounded to 60 s) in the server's folder and throws unless it
    /// exits 0.
    func runToCompletion(_ executable: URL, _ arguments: [String]) throws {
        let result = try runCommand(executable, arguments, in: folder)
        guard result.status == 0 else {
            throw TestFailure(
                "\(executable.path) \(arguments.joined(separator: " ")) exited with status "
                    + "\(result.status): \(result.standardError)")
        }
    }
}
