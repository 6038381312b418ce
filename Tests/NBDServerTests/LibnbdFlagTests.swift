// NBDClient hands NBDProtocol's CommandFlags to libnbd as they are: this pins libnbd's
// LIBNBD_CMD_FLAG_* (libnbd.h) to the spec's NBD_CMD_FLAG_* bits that CommandFlags names.

import CNBD
import NBDProtocol
import Testing

@Suite struct LibnbdFlagTests {
    @Test func libnbdCommandFlagsAreTheSpecCommandFlags() {
        #expect(UInt32(CommandFlags.fua.rawValue) == LIBNBD_CMD_FLAG_FUA)
        #expect(UInt32(CommandFlags.noHole.rawValue) == LIBNBD_CMD_FLAG_NO_HOLE)
        #expect(UInt32(CommandFlags.dontFragment.rawValue) == LIBNBD_CMD_FLAG_DF)
        #expect(UInt32(CommandFlags.requestOne.rawValue) == LIBNBD_CMD_FLAG_REQ_ONE)
        #expect(UInt32(CommandFlags.fastZero.rawValue) == LIBNBD_CMD_FLAG_FAST_ZERO)
    }
}
