// The control channel's messages (docs/CONTROL.md): one JSON object a line each way, request
// `{"version":1,"command":C,"args":{...}}`, response `{"version":1,"ok":true,"result":R}` or
// `{"version":1,"ok":false,"error":"one line"}`. What each command does is the handler's.

import NBDProtocol

/// A parsed control request.
public struct ControlRequest: Sendable {
    public var command: String
    /// Always an object (`{}` when the request had no `args`).
    public var arguments: ControlJSON

    public init(command: String, arguments: ControlJSON = .object([])) {
        self.command = command
        self.arguments = arguments
    }

    /// The string argument `name`; throws a one-line reason when missing or not a string.
    public func string(_ name: String) throws(ControlFailure) -> String {
        guard let value = arguments[name]?.stringValue else {
            throw ControlFailure("\(command): argument \"\(name)\" (a string) is missing")
        }
        return value
    }

    /// The boolean argument `name`, false when absent.
    public func flag(_ name: String) throws(ControlFailure) -> Bool {
        guard let value = arguments[name] else { return false }
        guard let flag = value.boolValue else {
            throw ControlFailure("\(command): argument \"\(name)\" must be true or false")
        }
        return flag
    }
}

/// A request the channel or the handler refuses, with the one line sent back.
public struct ControlFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A byte-stream frame's header (docs/CONTROL.md, "Byte streams"): the payload's length, 4 bytes
/// in network byte order. A payload holds 1 to `maxPayloadByteCount` bytes, so a header's first
/// byte is 0, never the `{` a response line starts with.
public enum ControlStreamFrame {
    public static let headerByteCount = 4
    public static let maxPayloadByteCount = 1 << 20

    /// Writes the header of a frame of `payloadByteCount` bytes into `header`.
    public static func storeHeader(
        payloadByteCount: Int, into header: UnsafeMutableRawBufferPointer
    ) {
        precondition(payloadByteCount > 0 && payloadByteCount <= maxPayloadByteCount)
        header.storeBigEndian(UInt32(payloadByteCount), at: 0)
    }

    /// The payload length `header` gives, or nil when no frame may have it.
    public static func payloadByteCount(header: UnsafeRawBufferPointer) -> Int? {
        let count = Int(header.loadBigEndian(at: 0, as: UInt32.self))
        return count > 0 && count <= maxPayloadByteCount ? count : nil
    }
}

/// Encoding and decoding of control lines.
public enum ControlProtocol {
    /// The protocol version this cowbd speaks; a request naming another is refused.
    public static let version: Int64 = 1
    /// Longest line accepted, newline included: a longer one is refused and the client closed.
    public static let maxLineByteCount = 64 << 10

    /// A request line, newline included.
    public static func requestLine(_ request: ControlRequest) -> String {
        ControlJSON.object([
            ("version", .integer(version)), ("command", .string(request.command)),
            ("args", request.arguments),
        ]).renderedOnOneLine() + "\n"
    }

    /// Parses a request line (without its newline).
    public static func parseRequest(_ line: [UInt8]) throws(ControlFailure) -> ControlRequest {
        let value: ControlJSON
        do { value = try ControlJSON(parsing: line) } catch {
            throw ControlFailure("bad request: \(error.description)")
        }
        guard case .object = value else { throw ControlFailure("bad request: not a JSON object") }
        guard let requestVersion = value["version"]?.integerValue else {
            throw ControlFailure("bad request: \"version\" (an integer) is missing")
        }
        guard requestVersion == version else {
            throw ControlFailure(
                "bad request: protocol version \(requestVersion) is not supported (this cowbd "
                    + "speaks version \(version))")
        }
        guard let command = value["command"]?.stringValue else {
            throw ControlFailure("bad request: \"command\" (a string) is missing")
        }
        let arguments = value["args"] ?? .object([])
        guard case .object = arguments else {
            throw ControlFailure("bad request: \"args\" must be an object")
        }
        return ControlRequest(command: command, arguments: arguments)
    }

    /// A success line, newline included.
    public static func successLine(_ result: ControlJSON) -> String {
        ControlJSON.object([
            ("version", .integer(version)), ("ok", .bool(true)), ("result", result),
        ]).renderedOnOneLine() + "\n"
    }

    /// A failure line, newline included; `message` is kept to its first line.
    public static func failureLine(_ message: String) -> String {
        let firstLine = message.split(separator: "\n", omittingEmptySubsequences: false).first
        return ControlJSON.object([
            ("version", .integer(version)), ("ok", .bool(false)),
            ("error", .string(String(firstLine ?? ""))),
        ]).renderedOnOneLine() + "\n"
    }

    /// The result of a response line (without its newline); throws the server's error line,
    /// or a reason the line is not a response.
    public static func parseResponse(_ line: [UInt8]) throws(ControlFailure) -> ControlJSON {
        let value: ControlJSON
        do { value = try ControlJSON(parsing: line) } catch {
            throw ControlFailure("bad response: \(error.description)")
        }
        guard let ok = value["ok"]?.boolValue else {
            throw ControlFailure("bad response: \"ok\" is missing")
        }
        guard ok else { throw ControlFailure(value["error"]?.stringValue ?? "unknown error") }
        return value["result"] ?? .null
    }
}
