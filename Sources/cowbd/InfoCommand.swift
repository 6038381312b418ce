import ArgumentParser

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info")
    func run() throws {}
}
