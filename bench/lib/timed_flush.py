"""Sends one FLUSH to an NBD export over a connection of its own and prints how long the server
took to answer it, in nanoseconds (the connection's set-up is not counted): the durable end of
a write job, timed apart from the writes. Every server the bench runs flushes the whole export
whichever connection asks (cowbd advertises CAN_MULTI_CONN), so this FLUSH covers the writes
fio made on its own connection. Prints 0 for an export without FLUSH.
Usage: timed_flush.py SOCKET"""

import sys
import time

import nbd


def main():
    handle = nbd.NBD()
    handle.connect_unix(sys.argv[1])
    elapsed_ns = 0
    if handle.can_flush():
        started_ns = time.monotonic_ns()
        handle.flush()
        elapsed_ns = time.monotonic_ns() - started_ns
    handle.shutdown()
    print(elapsed_ns)


if __name__ == "__main__":
    main()
