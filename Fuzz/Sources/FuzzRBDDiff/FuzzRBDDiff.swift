// Fuzz target: a Ceph rbd diff stream (v1 or v2), imported as `cowbd import-diff --force`
// imports it into a raw image. Input: the whole diff, as is (rbd diffs carry no checksums).

import FuzzSupport

let harness = DiffHarness()

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ byteCount: Int) -> CInt {
    harness.importDiff(Array(UnsafeBufferPointer(start: data, count: byteCount)))
    return 0
}

@_cdecl("FuzzRBDDiff_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, testOneInput)
}
