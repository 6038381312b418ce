// READ and WRITE against the model: unaligned offsets, chunk boundaries, the partial last
// chunk, the base's zero stretch and sparse hole, and the FUA and DF flags.

import NBDClient
import Testing

@Suite struct ReadWriteTests {
    static let size = UInt64(TestImage.byteCount)
    static let zeros = TestImage.writtenZeroRange
    static let hole = TestImage.sparseHoleRange

    /// (offset, byte count) pairs: unaligned, crossing 4 KiB chunks, around the zero stretch
    /// and the hole, and at the end of the export.
    static let readCases: [(UInt64, Int)] = [
        (0, 1), (1, 4095), (4095, 2), (4096, 4096), (4000, 10_000), (12_345, 65_543),
        ((1 << 20) - 7, 14), ((3 << 20) + 5, (1 << 20) + 3),
        (UInt64(zeros.lowerBound - 100), 300), (UInt64(zeros.upperBound - 50), 5000),
        (UInt64(hole.lowerBound - 4097), 8194), (UInt64(hole.lowerBound + 12_345), 4096),
        (UInt64(hole.upperBound - 1), 2), (size - 1, 1), (size - 4097, 4097),
        (size - 2561, 2561), (size - 100_000, 100_000),
    ]

    @Test func readsMatchTheBaseAtUnalignedOffsetsAndAcrossChunkBoundaries() throws {
        try withTestServer { server in
            let connection = try server.connect()
            let model = DiskModel()
            for (byteOffset, byteCount) in Self.readCases {
                try expectRead(connection, matches: model, at: byteOffset, byteCount: byteCount)
            }
        }
    }

    @Test func readOfTheLastByteReturnsIt() throws {
        try withTestServer { server in
            let connection = try server.connect()
            #expect(try connection.pread(at: Self.size - 1, byteCount: 1) == [TestImage.bytes.last])
        }
    }

    @Test func readWithDontFragmentArrivesAsOneDataChunk() throws {
        try withTestServer { server in
            let connection = try server.connect()
            // Spans base data and the start of the sparse hole, which a server may otherwise
            // send as separate data and hole chunks.
            let byteOffset = UInt64(Self.hole.lowerBound - 10_000)
            let (bytes, chunks) = try connection.preadStructured(
                at: byteOffset, byteCount: 50_000, flags: .dontFragment)
            #expect(
                firstDifference(bytes, DiskModel().read(at: byteOffset, byteCount: 50_000)) == nil)
            #expect(chunks.count == 1, "\(chunks)")
            #expect(chunks.first?.byteOffset == byteOffset)
            #expect(chunks.first?.byteCount == 50_000)
            #expect(chunks.first?.status == .data)
        }
    }

    @Test func unalignedWriteAcrossChunksKeepsTheNeighbouringBaseBytes() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            let data = patternBytes(count: 5000, seed: 11)
            try connection.pwrite(data, at: 4000)
            model.write(data, at: 4000)
            try expectRead(connection, matches: model, at: 0, byteCount: 16_384)
        }
    }

    @Test func oneByteWriteInTheMiddleOfAChunkKeepsTheRestOfTheChunk() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            try connection.pwrite([0x5A], at: 8192 + 1234)
            model.write([0x5A], at: 8192 + 1234)
            try expectRead(connection, matches: model, at: 8192, byteCount: 4096)
        }
    }

    @Test func writeOfTheLastBytesOfThePartialChunkReadsBack() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            let data = patternBytes(count: 100, seed: 12)
            try connection.pwrite(data, at: Self.size - 100)
            model.write(data, at: Self.size - 100)
            try expectRead(connection, matches: model, at: Self.size - 9000, byteCount: 9000)
        }
    }

    @Test func writeWithFUAReadsBack() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            let data = patternBytes(count: 70_000, seed: 13)
            try connection.pwrite(data, at: 200_001, flags: .fua)
            model.write(data, at: 200_001)
            try expectRead(connection, matches: model, at: 190_000, byteCount: 90_000)
        }
    }

    @Test func overwriteReplacesOnlyTheOverlap() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            for (index, byteOffset) in [UInt64(40_000), 41_000, 39_500].enumerated() {
                let data = patternBytes(count: 3000, seed: 20 + UInt64(index))
                try connection.pwrite(data, at: byteOffset)
                model.write(data, at: byteOffset)
            }
            try expectRead(connection, matches: model, at: 32_768, byteCount: 16_384)
        }
    }

    @Test func writesIntoTheSparseHoleAndZeroStretchReadBack() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            for byteOffset in [
                UInt64(Self.hole.lowerBound + 777), UInt64(Self.zeros.lowerBound + 5),
            ] {
                let data = patternBytes(count: 9000, seed: byteOffset)
                try connection.pwrite(data, at: byteOffset)
                model.write(data, at: byteOffset)
            }
            try expectExport(connection, matches: model)
        }
    }

    @Test func largeWriteSpanningTheHoleAndZeroStretchReadsBack() throws {
        try withTestServer { server in
            let connection = try server.connect()
            var model = DiskModel()
            // One request spanning most of the export, hole and zero stretch included.
            let data = patternBytes(count: 5 << 20, seed: 14)
            try connection.pwrite(data, at: 12_345)
            model.write(data, at: 12_345)
            try expectExport(connection, matches: model)
        }
    }
}
