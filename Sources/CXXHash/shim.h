#include <xxhash.h>
#if defined(__x86_64__)
// The same XXH3 functions under their `_dispatch` names: the library picks SSE2, AVX2 or
// AVX-512 at run time. The plain names stay the portable build's.
#define XXH_DISPATCH_DISABLE_REPLACE 1
#include <xxh_x86dispatch.h>
#endif
