// Options and output helpers more than one subcommand uses: --json, aligned "key: value"
// lines, sizes shown both ways, dates, --rate, the logger and how bases are opened.

import ArgumentParser
import CowFormat
import CowStore
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// `--json`: machine-readable output on stdout instead of text.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print JSON (snake_case keys, stable across versions) instead of text.")
    var json = false
}

/// The logger of every command: lines on stderr from `level` up. The libraries take it from
/// here (BaseOpenOptions, NBDServer); only this executable makes one.
func makeLogger(level: Logger.Level = .info) -> Logger {
    var logger = Logger(label: "cowbd") { label in StreamLogHandler.standardError(label: label) }
    logger.logLevel = level
    return logger
}

/// How a command opens the block sources under a store: with its logger, each file under a
/// shared lock (so nobody writes a base in place while it is read).
func baseOpenOptions(
    cacheByteCount: Int = CompressedBaseImage.defaultCacheByteCount,
    logger: Logger = makeLogger()
) -> BaseOpenOptions {
    BaseOpenOptions(cacheByteCount: cacheByteCount, logger: logger, lock: .shared)
}

/// The bytes a second `--rate TEXT` asks for (K, M, G suffixes); nil without the option (no
/// limit). Zero is refused: it would never finish.
func parseRate(_ text: String?) throws -> UInt64? {
    guard let text else { return nil }
    let parsed = try ByteSize.parse(text)
    guard parsed > 0 else { throw StoreError.invalidArgument("--rate must be above 0") }
    return parsed
}

/// Prints `rows` as "key: value" lines with the values lined up.
func printAligned(_ rows: [(String, String)]) {
    let width = rows.map { $0.0.count }.max() ?? 0
    for (key, value) in rows {
        // An empty key continues the row above: no colon.
        let label = key.isEmpty ? " " : key + ":"
        print(label + String(repeating: " ", count: width - key.count + 1) + value)
    }
}

/// "4 KiB (4096 bytes)"; just "512 bytes" below 1 KiB.
func describeSize(_ byteCount: UInt64) -> String {
    byteCount < 1024
        ? ByteSize.describe(byteCount) : "\(ByteSize.describe(byteCount)) (\(byteCount) bytes)"
}

/// Seconds since 1970 as "2025-11-25T16:35:00Z" (ISO 8601, UTC).
/// The corresponding C function is `gmtime_r`.
func iso8601(unixSeconds: UInt64) -> String {
    var seconds = time_t(clamping: unixSeconds)
    var parts = tm()
    guard gmtime_r(&seconds, &parts) != nil else { return String(unixSeconds) }
    func padded(_ value: Int32, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
    return padded(parts.tm_year + 1900, 4) + "-" + padded(parts.tm_mon + 1, 2) + "-"
        + padded(parts.tm_mday, 2)
        + "T" + padded(parts.tm_hour, 2) + ":" + padded(parts.tm_min, 2) + ":"
        + padded(parts.tm_sec, 2) + "Z"
}

extension PowerOfTwoGeometry {
    /// The size an option such as `--chunk-size 64K` asks for, or the default when it is absent.
    /// Errors name the option and the sizes allowed (`sizes`: "from 4K to 1M").
    init(option: String, _ text: String?, sizes: String) throws {
        guard let text else {
            try self.init(shift: Self.defaultShift)
            return
        }
        let byteCount: UInt64
        do {
            byteCount = try ByteSize.parse(text)
        } catch {
            throw ValidationError("\(option): \(error)")
        }
        do {
            try self.init(unitByteCount: byteCount)
        } catch {
            throw ValidationError("\(option) \(text): must be a power of two \(sizes)")
        }
    }
}
