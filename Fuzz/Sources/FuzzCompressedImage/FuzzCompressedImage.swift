// Fuzz target: a compressed image (header, footer, block index, blocks) opened as a base,
// verified block by block (checksum, then LZ4 decode against the shared dictionary, if any),
// and read through the block cache.
// Input: the whole file; checksums, layout fields and the footer are recomputed.

import CowFormat
import CowStore
import FuzzSupport
import SystemPackage

let imageFile = ScratchFile(name: "image")
let options = BaseOpenOptions(cacheByteCount: 4 << 20, logger: BaseOpenOptions.quiet.logger)

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: byteCount))
    bytes.fixCompressedImage()
    imageFile.write(bytes)
    guard let image = try? CompressedBaseImage(path: FilePath(imageFile.path), options: options)
    else { return 0 }
    let verification = image.verify()
    precondition(verification.blockCount == image.header.blockCount, "blocks skipped")
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
    defer { buffer.deallocate() }
    let readByteCount = Int(min(UInt64(buffer.count), image.byteCount))
    let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[..<readByteCount])
    try? image.read(at: 0, into: piece)
    try? image.read(at: image.byteCount - UInt64(readByteCount), into: piece)
    _ = try? image.extent(at: 0, maxByteCount: image.byteCount)
    return 0
}

@_cdecl("FuzzCompressedImage_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
