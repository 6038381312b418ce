// The entry point of every fuzz target. SwiftPM links an executable's `main` to the symbol
// `<module>_main` (so tests can link executables), which a `-parse-as-library` target must
// define itself; each target defines it as a call to `runFuzzer`, which hands the process to
// libFuzzer's driver, as libFuzzer's own `main` would.

import CLibFuzzer

/// The signature of `LLVMFuzzerTestOneInput`.
public typealias FuzzTestOneInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

/// Runs libFuzzer with the process's arguments and `testOneInput`; returns its exit status.
/// The corresponding C function is `LLVMFuzzerRunDriver`.
public func runFuzzer(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ testOneInput: FuzzTestOneInput
) -> CInt {
    var argumentCount = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&argumentCount, &arguments, testOneInput)
}
