// Replies to base reads sent by the thread that received the base's bytes, to a client that
// does not read them for a while: the socket fills, a reply that does not fit (wholly or in
// part) goes out later by another thread, and every reply arrives whole and unmixed with the
// others (libnbd parses the stream and the image is the judge).

import Foundation
import NBDClient
import TestSupport
import Testing

extension RemoteBaseTests {
    /// The image is read in pieces of both sizes: a reply of one page finds a full socket
    /// with nothing sent, one of many pages often fits only in part.
    static let fullSocketSmallReadByteCount = 4096
    static let fullSocketLargeReadByteCount = 64 << 10

    @Test func baseReadsAnsweredIntoAFullSocketArriveWhole() throws {
        let fixture = try Fixture()
        defer { fixture.base.kill() }
        let disk = try fixture.serveDisk([])
        defer { disk.kill() }
        let connection = try disk.connect()
        let half = Self.goldenByteCount / 2
        var reads =
            stride(from: 0, to: half, by: Self.fullSocketSmallReadByteCount).map {
                (byteOffset: $0, byteCount: Self.fullSocketSmallReadByteCount)
            }
            + stride(from: half, to: Self.goldenByteCount, by: Self.fullSocketLargeReadByteCount)
            .map { (byteOffset: $0, byteCount: Self.fullSocketLargeReadByteCount) }
        // In shuffled order, so no read continues a sequential run (read-ahead would answer
        // most of them from memory on the reader's thread instead).
        var generator = SplitMix64(seed: 51)
        for index in reads.indices.reversed() where index > 0 {
            reads.swapAt(index, Int(generator.next() % UInt64(index + 1)))
        }
        var readOf: [NBDCookie: (byteOffset: Int, byteCount: Int)] = [:]
        for read in reads {
            let cookie = try connection.aioPread(
                at: UInt64(read.byteOffset), byteCount: read.byteCount)
            readOf[cookie] = read
        }
        // Nothing is read meanwhile: the 8 MiB of replies fill the socket many times over.
        Thread.sleep(forTimeInterval: 1)
        var wrong: [Int] = []
        for _ in reads {
            let completion = try connection.waitForNextCompletion(timeoutMilliseconds: 20_000)
            let read = readOf.removeValue(forKey: completion.cookie)
            try #require(read != nil, "an answer to a read never sent")
            guard let read else { continue }
            let expected = fixture.golden[read.byteOffset..<(read.byteOffset + read.byteCount)]
            if (try? completion.result.get()).map({ $0[...] == expected }) != true {
                wrong.append(read.byteOffset)
            }
        }
        #expect(wrong.isEmpty, "reads with wrong bytes or errors at \(wrong)")
        #expect(disk.isRunning)
    }
}
