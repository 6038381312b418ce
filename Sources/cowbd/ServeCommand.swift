// `cowbd serve`: placeholder until the server lands.

import ArgumentParser

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Serve a COW store over NBD.")
    func run() throws {}
}
