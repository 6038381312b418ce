// A stalled network base must not stall what does not need it: with many base reads stuck on
// a base server that stopped answering (SIGSTOP) or died (SIGKILL), reads and writes of chunks
// the store holds complete, on the same connection and on another one; once the base is back,
// every stuck read returns the image's bytes.

import Foundation
import NBDClient
import TestSupport
import Testing

extension RemoteBaseTests {
    /// Base reads in flight at once: more than a connection has threads for them.
    static let stuckReadCount = 100
    /// A hang guard, not a speed check: a machine under load still answers well within it.
    static let heldRequestSeconds = 10.0

    /// Offsets of 4 KiB base reads, one per 64 KiB, past the written first 64 KiB and clear
    /// of the zero MiB (which block status may already have answered from memory).
    static func stuckReadOffsets() -> [UInt64] {
        var offsets: [UInt64] = []
        var byteOffset = 64 << 10
        while offsets.count < stuckReadCount && byteOffset < goldenByteCount {
            if byteOffset < 3 << 20 || byteOffset >= 4 << 20 {
                offsets.append(UInt64(byteOffset + 4096))
            }
            byteOffset += 64 << 10
        }
        return offsets
    }

    @Test(arguments: [SIGSTOP, SIGKILL])
    func heldChunksAnswerWhileManyBaseReadsAreStuck(signal: Int32) throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk(["--base-cache-size", "0", "--base-timeout", "120"])
        defer { disk.kill() }
        let held = [UInt8](repeating: 0x3C, count: 64 << 10)
        let first = try disk.connect()
        try first.pwrite(held, at: 0)
        let baseProcess = fixture.base.processIdentifier
        kill(baseProcess, signal)
        var resumed = false
        func resume() throws {
            guard !resumed else { return }
            resumed = true
            if signal == SIGSTOP {
                kill(baseProcess, SIGCONT)
            } else {
                fixture.base.reap()
                try fixture.base.start()
            }
        }
        defer { try? resume() }
        var stuck: [NBDCookie: UInt64] = [:]
        for byteOffset in Self.stuckReadOffsets() {
            stuck[try first.aioPread(at: byteOffset, byteCount: 4096)] = byteOffset
        }
        // Long enough for the server to take every stuck read off the socket.
        Thread.sleep(forTimeInterval: 0.5)
        let second = try disk.connect()
        for connection in [first, second] {
            let name = connection === first ? "same connection" : "other connection"
            let read = try connection.aioPread(at: 8192, byteCount: 16384)
            let rewritten = [UInt8](repeating: 0xC3, count: 4096)
            let write = try connection.aioPwrite(rewritten, at: 4096)
            let answers = try retire(
                [read, write], on: connection, withinSeconds: Self.heldRequestSeconds)
            let readBytes = answers[read].flatMap { try? $0.get() }
            #expect(
                readBytes == Array(held[8192..<(8192 + 16384)]),
                "\(name): read of held chunks: \(readBytes == nil ? "no answer" : "wrong bytes")")
            let writeOutcome: String
            switch answers[write] {
            case nil: writeOutcome = "no answer"
            case .success: writeOutcome = "done"
            case .failure(let error): writeOutcome = "\(error)"
            }
            #expect(writeOutcome == "done", "\(name): write of a held chunk: \(writeOutcome)")
        }
        try resume()
        let answers = try retire(Set(stuck.keys), on: first, withinSeconds: 120)
        #expect(answers.count == stuck.count, "\(answers.count) of \(stuck.count) base reads")
        for (cookie, result) in answers {
            let byteOffset = Int(stuck[cookie] ?? 0)
            let bytes = try? result.get()
            #expect(
                bytes == Array(fixture.golden[byteOffset..<(byteOffset + 4096)]),
                "base read at \(byteOffset): \(bytes == nil ? "\(result)" : "wrong bytes")")
        }
        try disk.stop()
    }

    /// Retires the commands `cookies` as their replies arrive, for at most `seconds`; what is
    /// missing from the answer did not complete in time.
    private func retire(
        _ cookies: Set<NBDCookie>, on connection: NBDConnection, withinSeconds seconds: Double
    )
        throws -> [NBDCookie: Result<[UInt8], NBDClientError>]
    {
        var answers: [NBDCookie: Result<[UInt8], NBDClientError>] = [:]
        let deadline = Date().addingTimeInterval(seconds)
        while answers.count < cookies.count && Date() < deadline {
            for cookie in cookies where answers[cookie] == nil {
                if let completion = connection.aioCommandCompleted(cookie) {
                    answers[cookie] = completion.result
                }
            }
            try connection.poll(timeoutMilliseconds: 50)
        }
        return answers
    }
}
