// cowbd's JSON: the control channel's (docs/CONTROL.md), with a bounded parser and a one-line
// writer, and the CLI's `--json` output, written indented. Only what they use: objects,
// arrays, strings, integers, booleans and null; no fractions or exponents, at most `maxDepth`
// levels, so a hostile line cannot exhaust a stack.

/// A JSON value: a control request or response, or what a command prints with `--json`.
public enum ControlJSON: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    /// An integer past `Int64.max` (a count or size read from a file); `integer(_: UInt64)`
    /// makes one only then, so each number has one form.
    case unsignedInteger(UInt64)
    case bool(Bool)
    case null
    case array([ControlJSON])
    /// Members in the order they were given or parsed.
    case object([(String, ControlJSON)])

    /// Deepest nesting of arrays and objects accepted.
    public static let maxDepth = 16

    public static func == (left: ControlJSON, right: ControlJSON) -> Bool {
        switch (left, right) {
        case (.string(let a), .string(let b)): return a == b
        case (.integer(let a), .integer(let b)): return a == b
        case (.unsignedInteger(let a), .unsignedInteger(let b)): return a == b
        case (.bool(let a), .bool(let b)): return a == b
        case (.null, .null): return true
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// A count or size: `integer` when it fits an Int64, else `unsignedInteger`.
    public static func integer(_ value: UInt64) -> ControlJSON {
        Int64(exactly: value).map { .integer($0) } ?? .unsignedInteger(value)
    }

    /// A string, or null when absent.
    public static func optional(_ text: String?) -> ControlJSON {
        text.map { .string($0) } ?? .null
    }

    /// The member `key` of an object; nil for anything else or a missing key.
    public subscript(key: String) -> ControlJSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    public var integerValue: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    /// On one line, with no spaces: a control message is one line.
    public func renderedOnOneLine() -> String { rendered(indent: nil) }

    /// Pretty-printed for `--json`: two-space indents from `indent`, no trailing newline.
    /// With a nil `indent`, on one line with no spaces.
    public func rendered(indent: Int? = 0) -> String {
        let inner = indent.map { "\n" + String(repeating: " ", count: $0 + 2) } ?? ""
        let outer = indent.map { "\n" + String(repeating: " ", count: $0) } ?? ""
        let nested = indent.map { $0 + 2 }
        switch self {
        case .string(let text): return Self.quoted(text)
        case .integer(let value): return String(value)
        case .unsignedInteger(let value): return String(value)
        case .bool(let value): return value ? "true" : "false"
        case .null: return "null"
        case .array(let values):
            guard !values.isEmpty else { return "[]" }
            let items = values.map { inner + $0.rendered(indent: nested) }
            return "[" + items.joined(separator: ",") + outer + "]"
        case .object(let members):
            guard !members.isEmpty else { return "{}" }
            let separator = indent == nil ? ":" : ": "
            let items = members.map {
                inner + Self.quoted($0.0) + separator + $0.1.rendered(indent: nested)
            }
            return "{" + items.joined(separator: ",") + outer + "}"
        }
    }

    /// `text` as a JSON string literal (RFC 8259, section 7).
    public static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    /// Parses one whole JSON text; throws a one-line reason naming the byte offset.
    public init(parsing bytes: [UInt8]) throws(ControlJSONError) {
        var parser = Parser(bytes: bytes)
        parser.skipSpace()
        self = try parser.value(depth: 0)
        parser.skipSpace()
        guard parser.position == bytes.count else { throw parser.failure("text after the value") }
    }
}

/// Why a control line is not JSON.
public struct ControlJSONError: Error, CustomStringConvertible {
    public let description: String
}

private struct Parser {
    let bytes: [UInt8]
    var position = 0

    func failure(_ what: String) -> ControlJSONError {
        ControlJSONError(description: "malformed JSON at byte \(position): \(what)")
    }

    mutating func skipSpace() {
        while position < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) {
            position += 1
        }
    }

    mutating func expect(_ literal: String) throws(ControlJSONError) {
        let expected = Array(literal.utf8)
        guard bytes.count - position >= expected.count,
            Array(bytes[position..<(position + expected.count)]) == expected
        else { throw failure("expected \(literal)") }
        position += expected.count
    }

    mutating func value(depth: Int) throws(ControlJSONError) -> ControlJSON {
        guard depth < ControlJSON.maxDepth else { throw failure("nested too deeply") }
        guard position < bytes.count else { throw failure("unexpected end") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try integer()
        default: throw failure("unexpected character")
        }
    }

    mutating func object(depth: Int) throws(ControlJSONError) -> ControlJSON {
        var members: [(String, ControlJSON)] = []
        try elements(closing: "}") { parser throws(ControlJSONError) in
            guard parser.position < parser.bytes.count,
                parser.bytes[parser.position] == UInt8(ascii: "\"")
            else { throw parser.failure("expected a member name") }
            let key = try parser.string()
            parser.skipSpace()
            try parser.expect(":")
            parser.skipSpace()
            members.append((key, try parser.value(depth: depth + 1)))
        }
        return .object(members)
    }

    mutating func array(depth: Int) throws(ControlJSONError) -> ControlJSON {
        var values: [ControlJSON] = []
        try elements(closing: "]") { parser throws(ControlJSONError) in
            values.append(try parser.value(depth: depth + 1))
        }
        return .array(values)
    }

    /// Reads an object's or array's elements, from its opening byte to `closing`: none, or
    /// some that `element` reads, separated by commas.
    mutating func elements(
        closing: Unicode.Scalar, _ element: (inout Parser) throws(ControlJSONError) -> Void
    ) throws(ControlJSONError) {
        position += 1
        skipSpace()
        if position < bytes.count && bytes[position] == UInt8(ascii: closing) {
            position += 1
            return
        }
        while true {
            skipSpace()
            try element(&self)
            skipSpace()
            guard position < bytes.count else { throw failure("unexpected end") }
            position += 1
            if bytes[position - 1] == UInt8(ascii: closing) { return }
            guard bytes[position - 1] == UInt8(ascii: ",") else {
                throw failure("expected , or \(closing)")
            }
        }
    }

    mutating func integer() throws(ControlJSONError) -> ControlJSON {
        let start = position
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        while position < bytes.count,
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[position])
        {
            position += 1
        }
        if position < bytes.count,
            [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[position])
        {
            throw failure("numbers are integers here")
        }
        let digits = String(decoding: bytes[start..<position], as: UTF8.self)
        if let value = Int64(digits) { return .integer(value) }
        guard let value = UInt64(digits) else { throw failure("not a 64-bit integer") }
        return .unsignedInteger(value)
    }

    mutating func string() throws(ControlJSONError) -> String {
        position += 1
        var scalars = String.UnicodeScalarView()
        var plainStart = position
        func flushPlain(_ end: Int) throws(ControlJSONError) {
            guard plainStart < end else { return }
            let bytes = Array(self.bytes[plainStart..<end])
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw failure("invalid UTF-8 in a string")
            }
            scalars.append(contentsOf: text.unicodeScalars)
        }
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                try flushPlain(position)
                position += 1
                return String(scalars)
            }
            if byte < 0x20 { throw failure("control character in a string") }
            if byte != UInt8(ascii: "\\") {
                position += 1
                continue
            }
            try flushPlain(position)
            guard position + 1 < bytes.count else { throw failure("unexpected end") }
            let escaped = bytes[position + 1]
            position += 2
            switch escaped {
            case UInt8(ascii: "\""): scalars.append("\"")
            case UInt8(ascii: "\\"): scalars.append("\\")
            case UInt8(ascii: "/"): scalars.append("/")
            case UInt8(ascii: "n"): scalars.append("\n")
            case UInt8(ascii: "r"): scalars.append("\r")
            case UInt8(ascii: "t"): scalars.append("\t")
            case UInt8(ascii: "b"): scalars.append("\u{8}")
            case UInt8(ascii: "f"): scalars.append("\u{c}")
            case UInt8(ascii: "u"):
                guard bytes.count - position >= 4,
                    let code = UInt32(
                        String(decoding: bytes[position..<(position + 4)], as: UTF8.self), radix: 16
                    ),
                    let scalar = Unicode.Scalar(code)
                else { throw failure("bad \\u escape (surrogates are not accepted)") }
                position += 4
                scalars.append(scalar)
            default: throw failure("bad escape")
            }
            plainStart = position
        }
        throw failure("unterminated string")
    }
}
