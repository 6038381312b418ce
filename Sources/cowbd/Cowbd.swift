// The cowbd command: lists the subcommands, nothing else.

import ArgumentParser

@main
struct Cowbd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cowbd",
        abstract:
            "A copy-on-write block device: a read-only base image plus a sparse store of changes, served over NBD.",
        discussion: """
            Typical session:
              cowbd create disk.cow --base golden.img
              cowbd serve disk.cow --listen unix:/tmp/disk.sock
              nbdinfo 'nbd+unix:///?socket=/tmp/disk.sock'
            """,
        version: cowbdVersion,
        subcommands: [
            CreateCommand.self, InfoCommand.self, CheckCommand.self, ServeCommand.self,
            MergeCommand.self, CompressCommand.self, ExportDiffCommand.self,
            ImportDiffCommand.self, CheckpointCommand.self, SnapshotCommand.self,
            HydrateCommand.self, CollapseCommand.self,
        ])
}
