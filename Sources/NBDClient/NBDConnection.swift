// One libnbd handle: settings made before connecting, and the connect calls. Options
// haggling, export facts, I/O, block status and async requests live in the extension files.
// Deliberately thin: each method wraps one libnbd call and adds no policy of its own.

import CNBD

#if canImport(Glibc)
    import Glibc
#endif

/// A client connection to one NBD export, backed by one libnbd handle (`struct nbd_handle`).
///
/// Not `Sendable`: async requests keep their buffers in `pendingCommands`, a plain dictionary
/// with no lock, so one connection is used from one task at a time. libnbd's own handle lock
/// would make the C calls safe across threads, but not that dictionary.
public final class NBDConnection {
    /// The libnbd handle; closed in `deinit`.
    let handle: OpaquePointer
    /// Buffers of async commands libnbd may still read or write, keyed by cookie. They are
    /// freed when the command is retired, or after `nbd_close` in `deinit`.
    var pendingCommands: [Int64: PendingCommand] = [:]

    /// Creates an unconnected handle. The corresponding C function is `nbd_create`.
    public init() throws {
        guard let handle = nbd_create() else { throw NBDClientError.last("nbd_create") }
        self.handle = handle
    }

    deinit {
        // nbd_close drops the connection first, so libnbd no longer touches the buffers.
        nbd_close(handle)
        for command in pendingCommands.values { command.buffer.deallocate() }
    }

    // MARK: Settings made before connecting

    /// The export to ask for; "" is the default export. The corresponding C function is
    /// `nbd_set_export_name`.
    public func setExportName(_ name: String) throws {
        try check(nbd_set_export_name(handle, name), "nbd_set_export_name")
    }

    /// The export name set on the handle. The corresponding C function is `nbd_get_export_name`.
    public func exportName() throws -> String {
        try takeString(nbd_get_export_name(handle), "nbd_get_export_name")
    }

    /// Whether to send `NBD_OPT_STRUCTURED_REPLY` (default on). The corresponding C function is
    /// `nbd_set_request_structured_replies`.
    public func setRequestStructuredReplies(_ request: Bool) throws {
        try check(
            nbd_set_request_structured_replies(handle, request),
            "nbd_set_request_structured_replies")
    }

    /// Whether to ask for `NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO`/`INFO` (default on). The
    /// corresponding C function is `nbd_set_request_block_size`.
    public func setRequestBlockSize(_ request: Bool) throws {
        try check(nbd_set_request_block_size(handle, request), "nbd_set_request_block_size")
    }

    /// Whether to ask for `NBD_INFO_NAME` and `NBD_INFO_DESCRIPTION`, needed for
    /// `canonicalExportName()` and `exportDescription()`. The corresponding C function is
    /// `nbd_set_full_info`.
    public func setFullInfo(_ request: Bool) throws {
        try check(nbd_set_full_info(handle, request), "nbd_set_full_info")
    }

    /// Adds a metadata context (`base:allocation`, `qemu:allocation-depth`) to request with
    /// `NBD_OPT_SET_META_CONTEXT`, and to query with `NBD_OPT_LIST_META_CONTEXT`. The
    /// corresponding C function is `nbd_add_meta_context`.
    public func addMetaContext(_ name: String) throws {
        try check(nbd_add_meta_context(handle, name), "nbd_add_meta_context")
    }

    /// Stops after the handshake greeting so options can be sent one by one (`optGo`,
    /// `optInfo`, `optList`, `optListMetaContext`, `optAbort`). The corresponding C function is
    /// `nbd_set_opt_mode`.
    public func setOptMode(_ enable: Bool) throws {
        try check(nbd_set_opt_mode(handle, enable), "nbd_set_opt_mode")
    }

    /// What libnbd checks locally before sending. The corresponding C function is
    /// `nbd_set_strict_mode`.
    public func setStrictMode(_ mode: NBDStrictMode) throws {
        try check(nbd_set_strict_mode(handle, mode.rawValue), "nbd_set_strict_mode")
    }

    /// The current local checks. The corresponding C function is `nbd_get_strict_mode`.
    public var strictMode: NBDStrictMode { NBDStrictMode(rawValue: nbd_get_strict_mode(handle)) }

    // Extended headers: libnbd 1.14 (the version this package builds against) has no
    // nbd_set_request_extended_headers or nbd_get_extended_headers_negotiated; they arrived in
    // libnbd 1.18. Tests of NBD_OPT_EXTENDED_HEADERS use a raw socket instead.

    // MARK: Connecting

    /// Connects to an NBD URI (`nbd+unix:///NAME?socket=PATH`, `nbd://HOST:PORT/NAME`); the
    /// export name comes from the URI. The corresponding C function is `nbd_connect_uri`.
    public func connect(uri: String) throws {
        try check(nbd_connect_uri(handle, uri), "nbd_connect_uri")
    }

    /// Connects to a Unix domain socket. The corresponding C function is `nbd_connect_unix`.
    public func connect(unixSocketPath path: String) throws {
        try check(nbd_connect_unix(handle, path), "nbd_connect_unix")
    }

    /// Connects over TCP. The corresponding C function is `nbd_connect_tcp`.
    public func connect(host: String, port: String) throws {
        try check(nbd_connect_tcp(handle, host, port), "nbd_connect_tcp")
    }

    /// Runs `arguments` (a server command line, the executable first) as a subprocess and
    /// connects to it through a socket passed with systemd's LISTEN_PID/LISTEN_FDS; closing the
    /// connection stops the subprocess. The corresponding C function is
    /// `nbd_connect_systemd_socket_activation`.
    public func connect(systemdSocketActivation arguments: [String]) throws {
        let copies = arguments.map { strdup($0) }
        defer { for copy in copies { free(copy) } }
        var argv = copies + [nil]
        try check(
            nbd_connect_systemd_socket_activation(handle, &argv),
            "nbd_connect_systemd_socket_activation")
    }

    /// Sends `NBD_CMD_DISC` after in-flight commands finish, then closes the socket. The
    /// corresponding C function is `nbd_shutdown`.
    public func shutdown() throws {
        try check(nbd_shutdown(handle, 0), "nbd_shutdown")
    }

    /// A debugging name for the libnbd state machine state (`"READY"`, `"NEGOTIATING"`,
    /// `"CLOSED"`...). The corresponding C function is `nbd_connection_state`.
    public var connectionState: String {
        nbd_connection_state(handle).map { String(cString: $0) } ?? "unknown"
    }

    /// Whether the connection died (the server closed it or sent bad bytes). The corresponding
    /// C function is `nbd_aio_is_dead`.
    public var isDead: Bool { nbd_aio_is_dead(handle) == 1 }

    /// Turns libnbd's malloc'd string into a Swift string and frees it.
    func takeString(_ pointer: UnsafeMutablePointer<CChar>?, _ operation: String) throws -> String {
        guard let pointer else { throw NBDClientError.last(operation) }
        defer { free(pointer) }
        return String(cString: pointer)
    }
}
