// libFuzzer's driver, for an executable whose main is its own (compiler-rt FuzzerInterface.h).
// The symbol comes from the runtime that `-sanitize=fuzzer` links; nothing to link here.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv,
                        int (*UserCb)(const uint8_t *Data, size_t Size));
