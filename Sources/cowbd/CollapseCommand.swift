// `cowbd collapse`: folds the N stores under a store into one new frozen layer and rebinds the
// store to it, so a long chain gets shorter without flattening onto the bottom image. On a
// served store the server does it (CollapseCommand+Live.swift).

import ArgumentParser
import CowFormat
import CowStore
import NBDServer
import SystemPackage

struct CollapseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collapse",
        abstract: "Fold the N layers under a store into one.",
        discussion: """
            The N stores under COW (its lower layer and the N-1 under that) become one new \
            frozen layer LAYER over the layer under them, and COW is rebound to it: the disk \
            is the same, the chain N-1 layers shorter. The folded layers are left as they \
            are (other stores may use them); remove them when nothing does.

            On a served store the server runs it while clients keep reading and writing \
            (--rate caps the bytes copied a second); progress shows in cowbd info. If the \
            server stops or is killed meanwhile, run the same command again: it reuses a \
            complete LAYER, or writes it anew.

            Example:
              cowbd collapse vm.cow --depth 3 --layer template-flat.cow --rate 50M
            """)

    @Argument(help: ArgumentHelp("The COW store whose lower layers are folded.", valueName: "cow"))
    var store: String

    @Option(help: ArgumentHelp("How many stores under COW to fold into one.", valueName: "n"))
    var depth: Int

    @Option(
        help: ArgumentHelp(
            "The new layer file (must not exist; default FIRST+LAST.cow beside COW).",
            valueName: "layer"))
    var layer: String?

    @Option(help: ArgumentHelp("Bytes copied a second at most (e.g. 50M).", valueName: "rate"))
    var rate: String?

    @OptionGroup var output: OutputOptions
    @OptionGroup var control: ControlOptions

    func validate() throws {
        guard depth >= 2 && depth <= LayerChain.maxStoreCount else {
            throw ValidationError("--depth takes 2 to \(LayerChain.maxStoreCount)")
        }
        if let rate {
            guard let bytes = try? ByteSize.parse(rate), bytes >= 1 << 20 else {
                throw ValidationError("--rate \(rate): a size of at least 1M (e.g. 50M)")
            }
        }
    }

    func run() throws {
        let rateBytes = try rate.map { try ByteSize.parse($0) }
        guard
            let client = try exitingOnError({
                try ControlClient.connect(storePath: store, options: control)
            })
        else {
            try exitingOnError {
                throw ControlFailure(
                    "\(store): not served: this cowbd collapses only a served store's layers")
            }
            return
        }
        let status = try exitingOnError {
            try LiveCollapseClient(client: client, store: store).run(
                depth: depth, layer: layer, rate: rateBytes)
        }
        if output.json {
            print(JSONValue(status).rendered())
            return
        }
        let layerPath = status["layer"]?.stringValue ?? layer ?? "?"
        if status["state"]?.stringValue == "already-done" {
            print("\(store): already over \(layerPath): nothing to do")
        } else {
            let bytes = UInt64(clamping: status["done_bytes"]?.integerValue ?? 0)
            print(
                "\(store): folded \(depth) layers into \(layerPath) "
                    + "(\(ByteSize.describe(bytes)) copied)"
                    + (status["reused_layer"]?.boolValue == true ? " (reused)" : "")
                    + "; the store is now over it")
        }
    }
}
