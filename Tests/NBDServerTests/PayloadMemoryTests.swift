// Memory under greedy clients: many connections pipelining the largest writes must not make
// the server hold a buffer each; request payloads share `--max-inflight-bytes`, and large
// buffers go back to the kernel after use. The server's RSS is read from /proc.

import Foundation
import NBDClient
import Synchronization
import Testing

@Suite(.serialized) struct PayloadMemoryTests {
    static let clientCount = 32
    static let writesPerClient = 2
    static let writeByteCount = 32 << 20
    static let budgetByteCount = 256 << 20
    /// What the server may hold beyond its resident size before the load (code, runtime, and
    /// under a sanitizer its shadow memory) and the budget: heap, the reader's receive buffers
    /// and the kept heads of the payload buffers.
    static let slackByteCount = 100 << 20
    static let completionTimeoutMilliseconds: Int32 = 60_000

    /// A kernel counter of the server process from /proc/PID/status, in bytes.
    func memory(_ key: String, of processIdentifier: Int32) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(processIdentifier)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }),
            let kibibytes = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { throw TestFailure("no \(key) in /proc/\(processIdentifier)/status") }
        return kibibytes << 10
    }

    /// Pseudo-random bytes, a word at a time (a 32 MiB pattern in a debug build in moments).
    func pattern(seed: UInt64) -> [UInt8] {
        var generator = SplitMix64(seed: seed)
        var bytes = [UInt8](repeating: 0, count: Self.writeByteCount)
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
        }
        return bytes
    }

    @Test func thirtyTwoClientsPipeliningLargestWritesStayWithinTheBudget() throws {
        var options = ServerOptions()
        let slotCount = Self.clientCount * Self.writesPerClient
        options.zeroBaseByteCount = UInt64(slotCount * Self.writeByteCount)
        options.extraArguments = ["--max-inflight-bytes", "\(Self.budgetByteCount >> 20)M"]
        let patterns = (0..<4).map { pattern(seed: 1300 + UInt64($0)) }
        try withTestServer(options) { server in
            let pid = server.processIdentifier
            let baseline = try memory("VmRSS", of: pid)
            let started = Date()
            let connections = try (0..<Self.clientCount).map { _ in try server.connect() }
            let failures = Mutex<[String]>([])
            let finished = DispatchGroup()
            for (clientIndex, connection) in connections.enumerated() {
                finished.enter()
                let client = OneThreadClient(connection)
                let thread = Thread {
                    let connection = client.connection
                    defer { finished.leave() }
                    do {
                        for writeIndex in 0..<Self.writesPerClient {
                            let slotIndex = clientIndex * Self.writesPerClient + writeIndex
                            _ = try connection.aioPwrite(
                                patterns[slotIndex % patterns.count],
                                at: UInt64(slotIndex * Self.writeByteCount))
                        }
                        for _ in 0..<Self.writesPerClient {
                            let completion = try connection.waitForNextCompletion(
                                timeoutMilliseconds: Self.completionTimeoutMilliseconds)
                            if case .failure(let error) = completion.result { throw error }
                        }
                    } catch {
                        failures.withLock { $0.append("client \(clientIndex): \(error)") }
                    }
                }
                thread.stackSize = 1 << 20
                thread.start()
            }
            finished.wait()
            print("writes done after \(Date().timeIntervalSince(started)) s")
            #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
            let peakAfterWrites = try memory("VmHWM", of: pid)

            for slotIndex in 0..<slotCount {
                let bytes = try connections[0].pread(
                    at: UInt64(slotIndex * Self.writeByteCount), byteCount: Self.writeByteCount)
                let expected = patterns[slotIndex % patterns.count]
                let same = bytes.withUnsafeBytes { actual in
                    expected.withUnsafeBytes {
                        memcmp(actual.baseAddress!, $0.baseAddress!, $0.count)
                    }
                }
                #expect(
                    bytes.count == expected.count && same == 0, "slot \(slotIndex) reads back wrong"
                )
            }
            print("reads done after \(Date().timeIntervalSince(started)) s")
            let peak = try memory("VmHWM", of: pid)
            let after = try memory("VmRSS", of: pid)
            let limit = baseline + Self.budgetByteCount + Self.slackByteCount
            print(
                "server RSS: baseline \(baseline >> 20) MiB, peak after writes"
                    + " \(peakAfterWrites >> 20) MiB, peak \(peak >> 20) MiB, after \(after >> 20) MiB"
                    + " (limit \(limit >> 20) MiB)")
            #expect(peak < limit, "server peak RSS \(peak >> 20) MiB over \(limit >> 20) MiB")
            // Every connection is still open: only the kept heads of its buffers stay.
            // TSan's shadow memory grows with every page touched, and stays.
            let sanitizerSlack =
                ProcessInfo.processInfo.environment["TSAN_OPTIONS"] == nil ? 0 : 64 << 20
            #expect(
                after < baseline + 64 << 20 + sanitizerSlack,
                "server RSS \(after >> 20) MiB after the writes, baseline \(baseline >> 20) MiB")
        }
    }
}

/// Hands a connection to the one thread that uses it from then on. `@unchecked Sendable`: the
/// creating thread does not touch the connection until that thread has finished.
private final class OneThreadClient: @unchecked Sendable {
    let connection: NBDConnection
    init(_ connection: NBDConnection) { self.connection = connection }
}
