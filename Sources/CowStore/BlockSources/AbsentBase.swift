// The base of a self-contained store (every base chunk hydrated or written): nothing to open.
// A read of it is a programmer error turned into an I/O error, never zeros passed off as data.

import CowFormat
import SystemPackage

/// Stands in for the base of a store that holds every base chunk; its reads fail.
final class AbsentBase: BlockSource {
    let path: FilePath
    let byteCount: UInt64
    var kindName: String { "none" }
    var locationDescription: String { "none (the store holds every base chunk)" }

    init(header: StoreHeader) {
        path = FilePath(header.basePathResolved)
        byteCount = header.baseByteCount
    }

    func read(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        throw StoreError.baseMissing(path: path, tried: [path.string])
    }

    func readIfReady(at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        false
    }

    func extent(at byteOffset: UInt64, maxByteCount: UInt64) throws -> SourceExtent {
        throw StoreError.baseMissing(path: path, tried: [path.string])
    }

    func prefetch(at byteOffset: UInt64, byteCount: UInt64) {}
}
