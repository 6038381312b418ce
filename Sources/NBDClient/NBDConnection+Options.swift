// Option haggling in opt mode (`setOptMode(true)` before connecting): each method sends one
// NBD_OPT_* and waits for its final reply. Results reach Swift through libnbd callbacks whose
// `user_data` points at a collector object that lives for the duration of the call.

import CNBD

/// One export of an `NBD_OPT_LIST` reply (`NBD_REP_SERVER`).
public struct ListedExport: Equatable, Sendable {
    public let name: String
    /// Empty when the server sent none.
    public let description: String
}

extension NBDConnection {
    /// Sends `NBD_OPT_GO` (with `NBD_OPT_SET_META_CONTEXT` first when contexts were added) and
    /// enters transmission. The corresponding C function is `nbd_opt_go`.
    public func optGo() throws {
        try check(nbd_opt_go(handle), "nbd_opt_go")
    }

    /// Sends `NBD_OPT_INFO` for the current export name and stays in negotiation; export facts
    /// (`size()`, `canTrim()`...) are then readable. The corresponding C function is
    /// `nbd_opt_info`.
    public func optInfo() throws {
        try check(nbd_opt_info(handle), "nbd_opt_info")
    }

    /// Sends `NBD_OPT_ABORT` and closes the connection. The corresponding C function is
    /// `nbd_opt_abort`.
    public func optAbort() throws {
        try check(nbd_opt_abort(handle), "nbd_opt_abort")
    }

    /// Sends `NBD_OPT_LIST` and returns every export the server names. The corresponding C
    /// function is `nbd_opt_list`.
    public func optList() throws -> [ListedExport] {
        let collector = Collector<ListedExport>()
        let callback = nbd_list_callback(
            callback: { userData, name, description in
                guard let userData else { return -1 }
                Unmanaged<Collector<ListedExport>>.fromOpaque(userData).takeUnretainedValue()
                    .items.append(
                        ListedExport(
                            name: name.map { String(cString: $0) } ?? "",
                            description: description.map { String(cString: $0) } ?? ""))
                return 0
            },
            user_data: Unmanaged.passUnretained(collector).toOpaque(), free: nil)
        try withExtendedLifetime(collector) {
            try check(nbd_opt_list(handle, callback), "nbd_opt_list")
        }
        return collector.items
    }

    /// Sends `NBD_OPT_LIST_META_CONTEXT` for the contexts added with `addMetaContext` (all the
    /// server has when none were added) and returns the names it replies with. The
    /// corresponding C function is `nbd_opt_list_meta_context`.
    public func optListMetaContext() throws -> [String] {
        let collector = Collector<String>()
        let callback = nbd_context_callback(
            callback: { userData, name in
                guard let userData else { return -1 }
                Unmanaged<Collector<String>>.fromOpaque(userData).takeUnretainedValue()
                    .items.append(name.map { String(cString: $0) } ?? "")
                return 0
            },
            user_data: Unmanaged.passUnretained(collector).toOpaque(), free: nil)
        try withExtendedLifetime(collector) {
            try check(nbd_opt_list_meta_context(handle, callback), "nbd_opt_list_meta_context")
        }
        return collector.items
    }
}

/// Gathers what a libnbd callback reports during one synchronous call.
final class Collector<Item> {
    var items: [Item] = []
}
