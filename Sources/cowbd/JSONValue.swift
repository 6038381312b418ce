// A minimal JSON writer for `--json` output. Keys keep the order they are given in, so the
// output reads the same on every run and in every version; no parsing here.

import NBDServer

/// A JSON value to print.
enum JSONValue {
    case string(String)
    case integer(UInt64)
    case bool(Bool)
    case null
    case array([JSONValue])
    /// Keys in print order.
    case object([(String, JSONValue)])

    /// A string, or null when absent.
    static func optional(_ text: String?) -> JSONValue { text.map { .string($0) } ?? .null }

    /// Pretty-printed with two-space indents, no trailing newline.
    func rendered(indent: Int = 0) -> String {
        let inner = String(repeating: " ", count: indent + 2)
        let outer = String(repeating: " ", count: indent)
        switch self {
        case .string(let text): return Self.quoted(text)
        case .integer(let value): return String(value)
        case .bool(let value): return value ? "true" : "false"
        case .null: return "null"
        case .array(let values):
            guard !values.isEmpty else { return "[]" }
            let items = values.map { inner + $0.rendered(indent: indent + 2) }
            return "[\n" + items.joined(separator: ",\n") + "\n" + outer + "]"
        case .object(let members):
            guard !members.isEmpty else { return "{}" }
            let items = members.map {
                inner + Self.quoted($0.0) + ": " + $0.1.rendered(indent: indent + 2)
            }
            return "{\n" + items.joined(separator: ",\n") + "\n" + outer + "}"
        }
    }

    /// `text` as a JSON string literal: the control channel's encoder, one for both.
    static func quoted(_ text: String) -> String { ControlJSON.quoted(text) }
}
