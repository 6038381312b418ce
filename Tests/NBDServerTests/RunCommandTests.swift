// `cowbd serve --run COMMAND` (captive mode): the command's environment, its exit status passed
// through (128+N for a signal), the private socket removed, SIGTERM passed on, and a real copy
// of the disk by nbdcopy compared byte for byte.

import Foundation
import Testing

@Suite struct RunCommandTests {
    @Test func exitStatusIsTheCommands() throws {
        let fixture = try CommandFixture()
        for (command, expected) in [("true", Int32(0)), ("exit 3", 3), ("exit 255", 255)] {
            let result = try fixture.runCowbd(["serve", fixture.storePath, "--run", command])
            #expect(
                result.status == expected && !result.killedBySignal, "\(command): \(result.summary)"
            )
        }
    }

    @Test func commandKilledBySignalGives128PlusTheSignal() throws {
        let fixture = try CommandFixture()
        for (command, expected) in [("kill -KILL $$", Int32(128 + 9)), ("kill -TERM $$", 128 + 15)]
        {
            let result = try fixture.runCowbd(["serve", fixture.storePath, "--run", command])
            #expect(
                result.status == expected && !result.killedBySignal, "\(command): \(result.summary)"
            )
        }
    }

    @Test func privateSocketAndItsFolderAreRemovedAndNothingElseIsPrinted() throws {
        let fixture = try CommandFixture()
        let result = try fixture.runCowbd([
            "serve", fixture.storePath, "--run",
            #"test -S "$unixsocket" && echo "$unixsocket" && echo "$uri""#,
        ])
        #expect(result.status == 0, "\(result.summary)")
        let lines = result.standardOutput.split(separator: "\n").map(String.init)
        try #require(lines.count == 2, "stdout: \(result.standardOutput)")
        let socketPath = lines[0]
        #expect(socketPath.hasSuffix("/nbd.sock"))
        #expect(lines[1] == "nbd+unix:///?socket=\(socketPath)")
        let folder = URL(fileURLWithPath: socketPath).deletingLastPathComponent().path
        #expect(!FileManager.default.fileExists(atPath: socketPath), "socket left behind")
        #expect(!FileManager.default.fileExists(atPath: folder), "folder \(folder) left behind")
    }

    @Test func listenAddressAndExportNameAreInTheEnvironment() throws {
        let fixture = try CommandFixture()
        let socketPath = fixture.path("given.sock")
        let result = try fixture.runCowbd([
            "serve", fixture.storePath, "--listen", "unix:\(socketPath)", "--export-name",
            "my disk", "--run", #"printf '%s\n' "$uri" "$unixsocket" "$exportname""#,
        ])
        #expect(result.status == 0, "\(result.summary)")
        #expect(
            result.standardOutput
                == "nbd+unix:///my%20disk?socket=\(socketPath)\n\(socketPath)\nmy disk\n")
        #expect(!FileManager.default.fileExists(atPath: socketPath), "socket left behind")
    }

    @Test func nbdcopyWritesThroughTheURIAndCopiesTheDiskOut() throws {
        let fixture = try CommandFixture()
        var model = DiskModel()
        let patch = patternBytes(count: 300_000, seed: 170)
        try Data(patch).write(to: URL(fileURLWithPath: fixture.path("patch.bin")))
        model.write(patch, at: 0)
        let written = try fixture.runCowbd([
            "serve", fixture.storePath, "--run", #"nbdcopy patch.bin "$uri""#,
        ])
        #expect(written.status == 0, "\(written.summary)")
        let copied = try fixture.runCowbd([
            "serve", fixture.storePath, "--read-only", "--run", #"nbdcopy "$uri" out.img"#,
        ])
        #expect(copied.status == 0, "\(copied.summary)")
        let difference = firstDifference(try fixture.bytes(of: "out.img"), model.bytes)
        #expect(difference == nil, "out.img: \(difference ?? "")")
    }

    @Test func sigtermToCowbdIsPassedToTheCommand() throws {
        let fixture = try CommandFixture()
        let startedPath = fixture.path("started")
        let result = try fixture.run(
            fixture.cowbd, ["serve", fixture.storePath, "--run", "touch started; exec sleep 30"]
        ) { processID in
            guard waitUntil(seconds: 10, { FileManager.default.fileExists(atPath: startedPath) })
            else { throw TestFailure("the --run command did not start") }
            kill(processID, SIGTERM)
        }
        #expect(result.status == 128 + SIGTERM && !result.killedBySignal, "\(result.summary)")
    }
}
