// Fuzz target: a store file's header and bitmap pages, opened as `StoreFile` opens a store
// (header, file size, every bitmap page, the checkpoint area). Input: the file's first bytes;
// the header checksum is recomputed, and the file is extended, sparse, to the header's data
// offset so the bitmap region is read whatever size the header claims.

import CowFormat
import CowStore
import FuzzSupport
import SystemPackage

let storeFile = ScratchFile(name: "store")

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: byteCount))
    bytes.fixStoreHeader()
    let header = bytes.withUnsafeBytes { try? StoreHeader(parsing: $0) }
    if let header {
        let again = header.encoded().withUnsafeBytes { try? StoreHeader(parsing: $0) }
        precondition(again == header, "a parsed header does not survive encoding")
    }
    storeFile.write(bytes, extendingTo: header?.dataByteOffset ?? 0)
    guard let store = try? StoreFile(path: FilePath(storeFile.path), access: .unlockedRead) else {
        return 0
    }
    precondition(store.writtenChunkCount <= store.header.chunkCount, "more bits than chunks")
    for chunkIndex in 0..<min(store.header.chunkCount, 64) { _ = store.isWritten(chunkIndex) }
    store.close()
    return 0
}

@_cdecl("FuzzStoreHeader_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
