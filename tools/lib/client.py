"""libnbd helpers shared by the scripts' Python clients (tools/lib is on their PYTHONPATH)."""
import errno

import nbd


def connect(sock, export="disk"):
    """A libnbd handle connected to EXPORT on the unix socket SOCK."""
    handle = nbd.NBD()
    handle.set_export_name(export)
    handle.connect_unix(sock)
    return handle


def expect_errno(handle, code, call, *args):
    """Calls CALL(*ARGS) and requires it to fail with errno CODE."""
    try:
        call(*args)
    except nbd.Error as error:
        assert error.errnum == code, (
            f"{call.__name__}{args[1:]}: errno {error.errnum} ({error}),"
            f" expected {errno.errorcode[code]}")
        return
    raise AssertionError(f"{call.__name__}{args[1:]} succeeded, expected {errno.errorcode[code]}")
