// Fuzz target: a native cowbd diff stream, imported as `cowbd import-diff --force` imports it
// into a raw image. Input: the whole diff; its checksums and trailer counts are recomputed.

import FuzzSupport

let harness = DiffHarness()

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: byteCount))
    bytes.fixNativeDiff()
    harness.importDiff(bytes)
    return 0
}

@_cdecl("FuzzNativeDiff_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
