#include <libnbd.h>
