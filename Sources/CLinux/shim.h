/* Linux calls and constants that glibc declares only under _GNU_SOURCE, which Swift's
   Glibc module is built without. Values are the kernel's ABI (linux/falloc.h, unistd.h). */
#include <sys/types.h>

extern int fallocate(int fd, int mode, off_t offset, off_t len);

#define COWBD_FALLOC_FL_KEEP_SIZE 0x01
#define COWBD_FALLOC_FL_PUNCH_HOLE 0x02
#define COWBD_FALLOC_FL_ZERO_RANGE 0x10
#define COWBD_SEEK_DATA 3
#define COWBD_SEEK_HOLE 4

struct iovec;
extern ssize_t preadv2(int fd, const struct iovec *iov, int count, off_t offset, int flags);
#define COWBD_RWF_NOWAIT 0x00000008
