// ControlJSON, the one JSON type of the control channel and of `--json` output, against
// Foundation's JSONSerialization: both renderings are JSON it reads as the same value, the
// one-line rendering parses back equal, and malformed texts are refused naming the byte.

import Foundation
import NBDServer
import Testing

@Suite struct ControlJSONTests {
    static let sample: ControlJSON = .object([
        ("name", .string("a \"quoted\"\n\u{1}name\\")),
        ("count", .integer(UInt64.max)),
        ("offset", .integer(Int64(-5))),
        ("small count", .integer(UInt64(7))),
        ("ok", .bool(true)),
        ("none", .null),
        ("list", .array([.integer(Int64(1)), .array([]), .object([]), .bool(false)])),
    ])

    @Test func bothRenderingsAreJSONFoundationReadsAsTheSameValue() throws {
        let oneLine = Self.sample.renderedOnOneLine()
        let indented = Self.sample.rendered()
        #expect(!oneLine.contains("\n") && indented.contains("\n  \"name\": "))
        let fromOneLine = try JSONSerialization.jsonObject(with: Data(oneLine.utf8))
        let fromIndented = try JSONSerialization.jsonObject(with: Data(indented.utf8))
        let object = try #require(fromOneLine as? NSDictionary)
        #expect(object == fromIndented as? NSDictionary)
        #expect(object["name"] as? String == "a \"quoted\"\n\u{1}name\\")
        #expect((object["offset"] as? NSNumber)?.int64Value == -5)
        #expect((object["small count"] as? NSNumber)?.int64Value == 7)
        #expect((object["list"] as? NSArray)?.count == 4)
    }

    @Test func theOneLineRenderingParsesBackEqualAndCountsKeepOneForm() throws {
        let parsed = try ControlJSON(parsing: Array(Self.sample.renderedOnOneLine().utf8))
        #expect(parsed == Self.sample)
        #expect(ControlJSON.integer(UInt64(7)) == .integer(Int64(7)))
        #expect(parsed["count"] == .unsignedInteger(UInt64.max))
    }

    @Test(arguments: [
        ("[1,2", "at byte 4: unexpected end"),
        ("[1 2]", "at byte 4: expected , or ]"),
        ("{\"a\":1 \"b\":2}", "at byte 8: expected , or }"),
        ("{1:2}", "at byte 1: expected a member name"),
        ("[]]", "at byte 2: text after the value"),
        ("-99999999999999999999", "at byte 21: not a 64-bit integer"),
    ])
    func malformedTextsAreRefusedNamingTheByte(text: String, reason: String) {
        #expect {
            _ = try ControlJSON(parsing: Array(text.utf8))
        } throws: { error in
            "\(error)" == "malformed JSON \(reason)"
        }
    }
}
