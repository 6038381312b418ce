// `cowbd info`: shows a store's sizes, chunk use and base. Reads without a lock and never
// fails over the base (it reports it); checking consistency is `check`'s job.

import ArgumentParser
import NBDServer

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a store's size, chunk use, base image and chain of layers.",
        discussion: """
            info reads the store without locking it, so it works while `cowbd serve` runs. A \
            server records written chunks in the store at each flush, so "chunks written" is \
            the count as of its last flush; "allocated" is the data on disk right now.

            A missing or changed base does not make info fail: "fingerprint status" says \
            ok, missing, changed: <what differs>, or unreadable: <why>. The base is looked \
            for at its resolved (absolute) path first, then, if it was given as a relative \
            path, beside the store.

            With --json, info prints one object with these keys:
              size, chunk_size, chunks_total, chunks_written, allocated_bytes  (numbers; bytes)
              base              the base path found, or null
              base_given        the base path as given to create
              base_resolved     that path made absolute at create time
              base_kind         "raw", or null when the base was not found
              base_size         the base size recorded at create time, in bytes
              base_fingerprint  32 hex digits (XXH3-128 of sampled base bytes)
              fingerprint_status  "ok", "missing", "changed: ...", "unreadable: ..."
              format_version    the store format version
              created           creation time, ISO 8601 UTC
              checkpoints       [{name, created, changed_chunks, disk_fingerprint}]
              chunks_hydrated   chunks holding a copy of the base's bytes (hydrate, serve --copy-on-read)
              self_contained    true when every base chunk is in the store: the base is not needed
              chain             the layers top to bottom, this store first: [{path, kind \
            ("cow", "raw", "cowbd-lz4", or "missing"/"unreadable" where the chain breaks), \
            size, and for stores chunk_size, chunks_written, frozen; problem where it breaks}]

            While the store is served, info asks the server over its control socket and \
            shows live figures (chunks written as of now) plus "served by", "control socket" \
            and "connections"; --json adds a "served" object {pid, control, connections}.

            Exit status: 0 shown, 1 the store cannot be read (its problem on stderr).
            """)

    @Argument(help: ArgumentHelp("The store file.", valueName: "cow"))
    var store: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var control: ControlOptions

    func run() throws {
        // A served store answers itself, with live figures (docs/CONTROL.md).
        if let client = try exitingOnError({
            try ControlClient.connect(storePath: store, options: control)
        }) {
            let result = try exitingOnError { try client.call("info") }
            if output.json {
                print((result["summary"] ?? .null).rendered())
            } else {
                printAligned(controlRows(result["rows"]))
            }
            return
        }
        let summary = try exitingOnError { try StoreSummary(storePath: store) }
        if output.json {
            print(summary.json.rendered())
        } else {
            printAligned(summary.rows)
        }
    }
}
