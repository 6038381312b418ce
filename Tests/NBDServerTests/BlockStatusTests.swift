// BLOCK_STATUS with base:allocation: holes of the base, written data, trimmed chunks, the
// REQ_ONE flag, and the rule that matters most: an extent claimed ZERO reads as zeros.

import NBDClient
import Testing

@Suite struct BlockStatusTests {
    static let hole = TestImage.sparseHoleRange
    static var holeRange: Range<UInt64> { UInt64(hole.lowerBound)..<UInt64(hole.upperBound) }

    func connectWithAllocation(_ server: TestServer) throws -> NBDConnection {
        let connection = try server.connect { try $0.addMetaContext("base:allocation") }
        try #require(try connection.canMetaContext("base:allocation"))
        return connection
    }

    @Test func untouchedSparseHoleOfTheBaseReportsHoleAndZero() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            let placed = try extents(connection, covering: Self.holeRange)
            #expect(
                flags(of: placed, overlapping: Self.holeRange) == [stateHole | stateZero],
                "\(placed)")
        }
    }

    @Test func untouchedBaseDataIsNotReportedZero() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            let placed = try extents(connection, covering: 0..<(1 << 20))
            #expect(placed.allSatisfy { $0.flags & stateZero == 0 }, "\(placed)")
        }
    }

    @Test func writtenDataReportsAllocated() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            // Inside the hole, so the written chunks differ from what surrounds them.
            let written =
                (Self.holeRange.lowerBound + 65_536)..<(Self.holeRange.lowerBound + 65_536 + 8192)
            try connection.pwrite(patternBytes(count: 8192, seed: 40), at: written.lowerBound)
            let placed = try extents(connection, covering: Self.holeRange)
            #expect(flags(of: placed, overlapping: written) == [0], "\(placed)")
            let before = Self.holeRange.lowerBound..<written.lowerBound
            #expect(flags(of: placed, overlapping: before) == [stateHole | stateZero], "\(placed)")
        }
    }

    @Test func trimmedChunksReportHoleAndZero() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            let written: Range<UInt64> = (1 << 20)..<((1 << 20) + 4 * 4096)
            try connection.pwrite(patternBytes(count: 4 * 4096, seed: 41), at: written.lowerBound)
            let trimmed = (written.lowerBound + 4096)..<(written.lowerBound + 3 * 4096)
            try connection.trim(at: trimmed.lowerBound, byteCount: 2 * 4096)
            let placed = try extents(connection, covering: written)
            #expect(flags(of: placed, overlapping: trimmed) == [stateHole | stateZero], "\(placed)")
            let kept = written.lowerBound..<trimmed.lowerBound
            #expect(flags(of: placed, overlapping: kept) == [0], "\(placed)")
            #expect(
                try connection.pread(at: trimmed.lowerBound, byteCount: 8192)
                    == [UInt8](repeating: 0, count: 8192))
        }
    }

    @Test func requestOneReturnsOneExtentStartingAtTheOffset() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            let start = Self.holeRange.lowerBound - 100_000
            let reply = try connection.blockStatus(
                at: start, byteCount: 300_000, flags: .requestOne)
            let answer = try #require(reply["base:allocation"])
            #expect(answer.count == 1)
            // The extent from `start` is base data, which ends where the hole begins.
            #expect((answer.first?.length ?? 0) <= 100_000)
            #expect((answer.first?.flags ?? stateZero) & stateZero == 0)
        }
    }

    @Test func extentsCoverTheExportAndEveryZeroExtentReadsAsZeros() throws {
        try withTestServer { server in
            let connection = try connectWithAllocation(server)
            try connection.pwrite(patternBytes(count: 20_000, seed: 42), at: 123_456)
            try connection.zero(at: 700_000, byteCount: 50_000)
            try connection.zero(at: 800_000, byteCount: 50_000, flags: .noHole)
            try connection.trim(at: 2 << 20, byteCount: 64 * 1024)
            let size = try connection.size()
            let placed = try extents(connection, covering: 0..<size)
            #expect(placed.map(\.length).reduce(0, +) >= size)
            for extent in placed where extent.flags & stateZero != 0 {
                let end = min(extent.byteRange.upperBound, size)
                let bytes = try connection.pread(
                    at: extent.byteOffset, byteCount: Int(end - extent.byteOffset))
                #expect(
                    bytes.allSatisfy { $0 == 0 }, "extent \(extent) is marked ZERO but has data")
            }
        }
    }

    @Test
    func allocationDepthReportsStoreBaseAndAbsentLayers() throws {
        try withTestServer { server in
            let connection = try server.connect { try $0.addMetaContext("qemu:allocation-depth") }
            try #require(try connection.canMetaContext("qemu:allocation-depth"))
            try connection.pwrite(patternBytes(count: 4096, seed: 43), at: 0)
            let placed = try extents(
                connection, context: "qemu:allocation-depth", covering: 0..<8192)
            // 1 = allocated in the store, 2 = in the base (interop-formats.md).
            #expect(flags(of: placed, overlapping: 0..<4096) == [1])
            #expect(flags(of: placed, overlapping: 4096..<8192) == [2])
            let hole = try extents(
                connection, context: "qemu:allocation-depth", covering: Self.holeRange)
            #expect(flags(of: hole, overlapping: Self.holeRange).isSubset(of: [0, 2]))
        }
    }
}
