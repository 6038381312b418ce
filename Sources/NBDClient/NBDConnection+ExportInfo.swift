// What the server said about the export and the connection: readable after `connect`, or in
// opt mode after `optInfo`/`optGo`. libnbd answers each from the handshake replies it kept;
// none of these calls touch the network.

import CNBD

extension NBDConnection {
    /// The export size in bytes. The corresponding C function is `nbd_get_size`.
    public func size() throws -> UInt64 {
        UInt64(try checkedValue(nbd_get_size(handle), "nbd_get_size"))
    }

    /// `NBD_FLAG_READ_ONLY`. The corresponding C function is `nbd_is_read_only`.
    public func isReadOnly() throws -> Bool {
        try flag(nbd_is_read_only(handle), "nbd_is_read_only")
    }

    /// `NBD_FLAG_SEND_FLUSH`. The corresponding C function is `nbd_can_flush`.
    public func canFlush() throws -> Bool { try flag(nbd_can_flush(handle), "nbd_can_flush") }

    /// `NBD_FLAG_SEND_FUA`. The corresponding C function is `nbd_can_fua`.
    public func canFUA() throws -> Bool { try flag(nbd_can_fua(handle), "nbd_can_fua") }

    /// `NBD_FLAG_SEND_TRIM`. The corresponding C function is `nbd_can_trim`.
    public func canTrim() throws -> Bool { try flag(nbd_can_trim(handle), "nbd_can_trim") }

    /// `NBD_FLAG_SEND_WRITE_ZEROES`. The corresponding C function is `nbd_can_zero`.
    public func canZero() throws -> Bool { try flag(nbd_can_zero(handle), "nbd_can_zero") }

    /// `NBD_FLAG_SEND_FAST_ZERO`. The corresponding C function is `nbd_can_fast_zero`.
    public func canFastZero() throws -> Bool {
        try flag(nbd_can_fast_zero(handle), "nbd_can_fast_zero")
    }

    /// `NBD_FLAG_SEND_CACHE`. The corresponding C function is `nbd_can_cache`.
    public func canCache() throws -> Bool { try flag(nbd_can_cache(handle), "nbd_can_cache") }

    /// `NBD_FLAG_SEND_DF` (only with structured replies). The corresponding C function is
    /// `nbd_can_df`.
    public func canDF() throws -> Bool { try flag(nbd_can_df(handle), "nbd_can_df") }

    /// `NBD_FLAG_CAN_MULTI_CONN`. The corresponding C function is `nbd_can_multi_conn`.
    public func canMultiConn() throws -> Bool {
        try flag(nbd_can_multi_conn(handle), "nbd_can_multi_conn")
    }

    /// `NBD_FLAG_ROTATIONAL`. The corresponding C function is `nbd_is_rotational`.
    public func isRotational() throws -> Bool {
        try flag(nbd_is_rotational(handle), "nbd_is_rotational")
    }

    /// Whether the server agreed to `context` in `NBD_OPT_SET_META_CONTEXT`, so BLOCK_STATUS
    /// may be sent for it. The corresponding C function is `nbd_can_meta_context`.
    public func canMetaContext(_ context: String) throws -> Bool {
        try flag(nbd_can_meta_context(handle, context), "nbd_can_meta_context")
    }

    /// Whether `NBD_OPT_STRUCTURED_REPLY` was acknowledged. The corresponding C function is
    /// `nbd_get_structured_replies_negotiated`.
    public func structuredRepliesNegotiated() throws -> Bool {
        try flag(
            nbd_get_structured_replies_negotiated(handle), "nbd_get_structured_replies_negotiated")
    }

    /// The `NBD_INFO_BLOCK_SIZE` values. The corresponding C function is `nbd_get_block_size`.
    public func blockSizeConstraints() throws -> BlockSizeConstraints {
        func value(_ kind: Int32) throws -> UInt64 {
            UInt64(try checkedValue(nbd_get_block_size(handle, kind), "nbd_get_block_size"))
        }
        return BlockSizeConstraints(
            minimum: try value(LIBNBD_SIZE_MINIMUM), preferred: try value(LIBNBD_SIZE_PREFERRED),
            maximum: try value(LIBNBD_SIZE_MAXIMUM))
    }

    /// The export name the server reported in `NBD_INFO_NAME` (needs `setFullInfo(true)`), or
    /// the requested name. The corresponding C function is `nbd_get_canonical_export_name`.
    public func canonicalExportName() throws -> String {
        try takeString(nbd_get_canonical_export_name(handle), "nbd_get_canonical_export_name")
    }

    /// The `NBD_INFO_DESCRIPTION` text (needs `setFullInfo(true)`); throws when the server sent
    /// none. The corresponding C function is `nbd_get_export_description`.
    public func exportDescription() throws -> String {
        try takeString(nbd_get_export_description(handle), "nbd_get_export_description")
    }

    /// `"newstyle-fixed"`, `"newstyle"` or `"oldstyle"`. The corresponding C function is
    /// `nbd_get_protocol`.
    public func handshakeProtocol() throws -> String {
        guard let text = nbd_get_protocol(handle) else {
            throw NBDClientError.last("nbd_get_protocol")
        }
        return String(cString: text)
    }

    /// Turns a libnbd boolean (1 true, 0 false, -1 error) into a Bool.
    private func flag(_ result: Int32, _ operation: String) throws -> Bool {
        try checkedValue(result, operation) == 1
    }
}
