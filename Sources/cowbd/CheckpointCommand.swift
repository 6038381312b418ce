// `cowbd checkpoint`: records a named point in time in a store, lists or deletes them, so
// `export-diff --since NAME` can write only what changed after it. The logic is CowStore's
// (StoreFile+Checkpoints.swift).

import ArgumentParser
import CowFormat
import CowStore
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Record, list or delete a store's checkpoints, for incremental diffs.",
        discussion: """
            A checkpoint marks a point in time: from then on the store records which chunks \
            change (a bitmap in the store, made durable at each flush), so
              cowbd export-diff vm.cow inc.diff --since NAME
            writes only what changed after it: an incremental backup. The diff applies to an \
            image holding the disk as it was at the checkpoint (import-diff checks its \
            fingerprint).

              cowbd checkpoint vm.cow monday          record "monday"
              cowbd checkpoint vm.cow                 list the checkpoints
              cowbd checkpoint vm.cow monday --delete forget it

            Names use letters, digits, '.', '_' and '-'; a store holds at most 8. While the \
            store is served, all three go through the server's control socket: a checkpoint \
            holds every write acknowledged before the command started, and none started after \
            it returned; writes in flight land wholly on one side (docs/CONTROL.md). After a crash of the server, every chunk the store holds counts as \
            changed since each checkpoint (nothing is missed; the next diff is larger). A merge \
            into the base needs the checkpoints deleted first.

            Exit status: 0 done, 1 failed (the reason on stderr).
            """)

    @Argument(help: ArgumentHelp("The COW store.", valueName: "cow"))
    var store: String

    @Argument(help: ArgumentHelp("The checkpoint to record (or delete); none lists them."))
    var name: String?

    @Flag(help: "Delete the checkpoint NAME.")
    var delete = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var control: ControlOptions

    func validate() throws {
        if delete && name == nil { throw ValidationError("--delete needs a checkpoint NAME") }
        if let name, let problem = Checkpoint.problem(withName: name) {
            throw ValidationError("\(name): \(problem)")
        }
    }

    func run() throws {
        let path = FilePath(store)
        if let client = try exitingOnError({
            try ControlClient.connect(storePath: store, options: control)
        }) {
            return try runLive(client)
        }
        guard let name else { return try list(path) }
        try exitingOnError {
            if delete {
                let file = try StoreFile(path: path, access: .exclusiveWrite)
                defer { file.close() }
                try file.deleteCheckpoint(named: name)
            } else {
                let disk = try VirtualDisk.open(storePath: path, options: baseOpenOptions())
                defer { disk.close() }
                try disk.addCheckpoint(
                    named: name, createdUnixSeconds: UInt64(max(0, time(nil))))
            }
        }
        printOutcome(name: name)
    }

    /// The same on a served store, through its control socket: recorded at once, between
    /// two requests, while clients go on writing (docs/CONTROL.md).
    private func runLive(_ client: ControlClient) throws {
        guard let name else {
            let result = try exitingOnError { try client.call("list-checkpoints") }
            if output.json {
                print((result["checkpoints"] ?? .array([])).rendered())
                return
            }
            let rows = controlRows(result["rows"])
            if rows.isEmpty { print("\(store): no checkpoints") }
            printAligned(rows)
            return
        }
        _ = try exitingOnError {
            try client.call(delete ? "delete-checkpoint" : "checkpoint", [("name", .string(name))])
        }
        printOutcome(name: name)
    }

    /// With --json, what was done (offline or live alike); nothing otherwise.
    private func printOutcome(name: String) {
        guard output.json else { return }
        print(
            JSONValue.object([("checkpoint", .string(name)), ("deleted", .bool(delete))])
                .rendered())
    }

    private func list(_ path: FilePath) throws {
        let listing = try exitingOnError { try CheckpointListing(storePath: path) }
        if output.json {
            print(listing.json.rendered())
            return
        }
        if listing.entries.isEmpty { print("\(store): no checkpoints") }
        printAligned(listing.rows)
        if listing.countsEveryHeldChunk {
            print(
                "note: the store was not closed cleanly since; diffs since these checkpoints "
                    + "include every chunk it holds")
        }
    }
}

/// A store's checkpoints as `checkpoint` (no NAME) and `info` show them. Takes no lock.
struct CheckpointListing {
    struct Entry {
        var checkpoint: Checkpoint
        /// Chunks marked changed since it (as of the server's last flush).
        var changedChunkCount: UInt64
    }

    var entries: [Entry]
    var countsEveryHeldChunk: Bool

    init(storePath path: FilePath) throws {
        let file = try StoreFile(path: path, access: .unlockedRead)
        defer { file.close() }
        self.init(file)
    }

    init(_ file: StoreFile) {
        let table = file.checkpointTable ?? CheckpointTable()
        entries = table.checkpoints.map {
            Entry(
                checkpoint: $0.checkpoint, changedChunkCount: file.changedChunkCount(slot: $0.slot))
        }
        countsEveryHeldChunk = table.isOpen
    }

    /// One "name: created, N chunks changed since" row a checkpoint.
    var rows: [(String, String)] {
        entries.map {
            (
                $0.checkpoint.name,
                iso8601(unixSeconds: $0.checkpoint.createdUnixSeconds) + ", "
                    + "\($0.changedChunkCount) chunks changed since"
            )
        }
    }

    /// `[{"name", "created", "changed_chunks", "fingerprint"}]`.
    var json: JSONValue {
        .array(
            entries.map {
                .object([
                    ("name", .string($0.checkpoint.name)),
                    ("created", .string(iso8601(unixSeconds: $0.checkpoint.createdUnixSeconds))),
                    ("changed_chunks", .integer($0.changedChunkCount)),
                    ("disk_fingerprint", .string($0.checkpoint.diskFingerprint.description)),
                ])
            })
    }
}
