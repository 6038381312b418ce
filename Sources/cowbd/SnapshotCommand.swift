// `cowbd snapshot`: freezes a stopped store's changes into a read-only layer and leaves the
// store empty over it. The crash-safe steps are CowStore's (StoreSnapshot.swift).

import ArgumentParser
import CowStore
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract:
            "Freeze what a store holds into a read-only layer; the store goes on empty over it.",
        discussion: """
            After `cowbd snapshot vm.cow vm-monday.cow`, vm-monday.cow holds what vm.cow held \
            (it is the same file, frozen: it never takes writes again) and vm.cow is an empty \
            store over it: the disk reads the same, the path you serve stays the same, and new \
            writes go to vm.cow. Snapshots stack into a chain (at most 64 stores deep); \
            `cowbd info` lists it.

            On a served store it runs live, through the server's control socket \
            (docs/CONTROL.md): writes acknowledged before the command are in LAYER, later ones \
            in the new top; clients stay connected and no request fails. Checkpoints carry \
            over: LAYER keeps them, and vm.cow starts with the same ones, so changes since a \
            checkpoint go on counting across the snapshot. No merge may be under way. LAYER \
            must not exist and must be on the same filesystem as COW (it is a hard link); \
            beside COW is best, so the chain can be moved as a folder.

            Crash-safe: at every instant COW opens and reads the same bytes. If snapshot is \
            interrupted, COW may be left frozen (it then serves read-only); run the same \
            command again to finish.

              cowbd snapshot vm.cow vm-monday.cow

            Exit status: 0 done (or already done), 1 failed (the reason on stderr; nothing \
            changed).
            """)

    @Argument(help: ArgumentHelp("The COW store; it stays the one to serve.", valueName: "cow"))
    var store: String

    @Argument(
        help: ArgumentHelp("The frozen layer to make; it must not exist.", valueName: "layer"))
    var layer: String

    @OptionGroup var output: OutputOptions
    @OptionGroup var control: ControlOptions

    func run() throws {
        let summary = try exitingOnError {
            if let client = try ControlClient.connect(storePath: store, options: control) {
                return try runLive(client)
            }
            return try StoreSnapshot.run(
                storePath: FilePath(store), layerPath: FilePath(layer),
                options: baseOpenOptions(), createdUnixSeconds: UInt64(clamping: time(nil)))
        }
        if output.json {
            print(
                JSONValue.object([
                    ("store", .string(store)), ("layer", .string(layer)),
                    ("layer_chunks", .integer(summary.layerChunkCount)),
                    ("resumed", .bool(summary.resumed)),
                    ("already_done", .bool(summary.alreadyDone)),
                ]).rendered())
        } else if summary.alreadyDone {
            print("\(store): already an empty store over \(layer); nothing to do")
        } else {
            print(
                "\(store): now an empty store over \(layer) (frozen, \(summary.layerChunkCount) chunks)"
                    + (summary.resumed ? "; finished an interrupted snapshot" : ""))
        }
    }

    /// The same on a served store, through its control socket: LAYER as an absolute path,
    /// since the server's working folder is not ours.
    private func runLive(_ client: ControlClient) throws -> StoreSnapshot.Summary {
        let result = try client.call(
            "snapshot", [("layer", .string(absoluteLayerPath()))])
        return StoreSnapshot.Summary(
            layerChunkCount: UInt64(clamping: result["layer_chunks"]?.integerValue ?? 0),
            resumed: result["resumed"]?.boolValue ?? false,
            alreadyDone: result["already_done"]?.boolValue ?? false)
    }

    private func absoluteLayerPath() -> String { absolutePath(layer).string }
}
