import ArgumentParser

struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create")
    func run() throws {}
}
