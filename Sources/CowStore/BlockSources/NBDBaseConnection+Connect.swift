// Opening a libnbd handle to a network base and learning what it serves: the blocking steps
// of a (re)connection, each bounded by a deadline so a silent server cannot hold a thread.

import CNBD
import CowFormat
import CowSupport

#if canImport(Glibc)
    import Glibc
#endif

extension NBDBaseConnection {
    /// Opens a handle to `uri` (any URI libnbd accepts, TLS query parameters included) and
    /// asks for `base:allocation`. The corresponding C functions are `nbd_create`,
    /// `nbd_add_meta_context`, `nbd_set_uri_allow_local_file`, `nbd_aio_connect_uri` and
    /// `nbd_poll`.
    static func connect(uri: String, deadline: Double) throws -> OpaquePointer {
        guard let handle = nbd_create() else { throw lastError(uri, "nbd_create") }
        do {
            guard nbd_add_meta_context(handle, allocationContext) == 0 else {
                throw lastError(uri, "nbd_add_meta_context")
            }
            // The URI's tls-certificates and tls-psk-file name local files; libnbd reads
            // them only when allowed. The URI comes from whoever made the store, as a path to
            // a base image does.
            guard nbd_set_uri_allow_local_file(handle, true) == 0 else {
                throw lastError(uri, "nbd_set_uri_allow_local_file")
            }
            guard nbd_aio_connect_uri(handle, uri) == 0 else {
                throw lastError(uri, "nbd_connect_uri")
            }
            while nbd_aio_is_connecting(handle) == 1 {
                try checkDeadline(deadline, uri, "connecting")
                guard nbd_poll(handle, 100) >= 0 else { throw lastError(uri, "nbd_poll") }
            }
            guard nbd_aio_is_ready(handle) == 1 else { throw lastError(uri, "nbd_connect_uri") }
            return handle
        } catch {
            nbd_close(handle)
            throw error
        }
    }

    /// The size of the export and its content fingerprint, read through `handle`.
    /// The corresponding C function is `nbd_get_size`.
    static func identity(of handle: OpaquePointer, uri: String, deadline: Double) throws
        -> RemoteBaseIdentity
    {
        let size = nbd_get_size(handle)
        guard size >= 0 else { throw lastError(uri, "nbd_get_size") }
        let byteCount = UInt64(size)
        let fingerprint = try sampleFingerprint(byteCount: byteCount) { byteOffset, buffer in
            try readSynchronously(
                handle, at: byteOffset, into: buffer, uri: uri, deadline: deadline)
        }
        return RemoteBaseIdentity(byteCount: byteCount, fingerprint: fingerprint)
    }

    /// Whether the server allows several connections to the export (`NBD_FLAG_CAN_MULTI_CONN`).
    static func allowsMultipleConnections(_ handle: OpaquePointer) -> Bool {
        nbd_can_multi_conn(handle) == 1
    }

    /// Whether the server answers block status for `base:allocation`.
    static func answersBlockStatus(_ handle: OpaquePointer) -> Bool {
        nbd_can_meta_context(handle, allocationContext) == 1
    }

    /// The largest read the server takes, at most `limit`.
    static func maxReadByteCount(_ handle: OpaquePointer, limit: Int) -> Int {
        let maximum = nbd_get_block_size(handle, Int32(LIBNBD_SIZE_MAXIMUM))
        return maximum > 0 ? min(limit, Int(maximum)) : limit
    }

    /// One read on a handle no thread drives yet, waiting at most until `deadline`. On a
    /// failure the caller closes the handle without polling it again, so libnbd never writes
    /// into `buffer` after this returns. The corresponding C function is `nbd_aio_pread`.
    static func readSynchronously(
        _ handle: OpaquePointer, at byteOffset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        uri: String, deadline: Double
    ) throws {
        guard !buffer.isEmpty else { return }
        let cookie = nbd_aio_pread(
            handle, buffer.baseAddress, buffer.count, byteOffset, nbd_completion_callback(), 0)
        guard cookie > 0 else { throw lastError(uri, "nbd_aio_pread") }
        while true {
            let status = nbd_aio_command_completed(handle, UInt64(cookie))
            if status == 1 { return }
            if status < 0 { throw lastError(uri, "nbd_pread at byte \(byteOffset)") }
            try checkDeadline(deadline, uri, "reading byte \(byteOffset)")
            guard nbd_poll(handle, 100) >= 0 else { throw lastError(uri, "nbd_poll") }
        }
    }

    private static func checkDeadline(_ deadline: Double, _ uri: String, _ stage: String) throws {
        guard monotonicSeconds() < deadline else {
            throw StoreError.remoteBase(uri: uri, detail: "no answer while \(stage)")
        }
    }

    /// libnbd's error of the last failed call on this thread. The corresponding C functions
    /// are `nbd_get_error` and `nbd_get_errno`.
    static func lastError(_ uri: String, _ operation: String) -> StoreError {
        let message = nbd_get_error().map { String(cString: $0) } ?? "no error text"
        return .remoteBase(uri: uri, detail: "\(operation) failed: \(message)")
    }
}

extension NBDBaseConnection {
    /// Closes a handle no thread drives. The corresponding C function is `nbd_close`.
    static func closeHandle(_ handle: OpaquePointer) { nbd_close(handle) }
}
