// Parses and prints byte sizes the way users write them: 4K, 64KiB, 1M, 10G or plain bytes.

/// Byte-size text for the command line.
public enum ByteSize {
    /// Parses "4096", "4K", "4k", "64KiB", "1M", "1MiB", "2G", "1T". K, M, G, T are binary
    /// (1024-based), as in dd, qemu-img and truncate.
    public static func parse(_ text: String) throws(FormatError) -> UInt64 {
        let trimmed = text.trimmingWhitespace()
        var digits = Substring(trimmed)
        var multiplier: UInt64 = 1
        let suffixes: [(String, UInt64)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40),
            ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40),
            ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40), ("B", 1),
        ]
        for (suffix, value) in suffixes where digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            multiplier = value
            break
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }),
            let number = UInt64(digits)
        else { throw .invalidSize(text) }
        let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw .invalidSize(text) }
        return product
    }

    /// "4 KiB", "1.5 GiB", "512 bytes": for messages and `info`.
    public static func describe(_ byteCount: UInt64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
        guard byteCount >= 1024 else { return "\(byteCount) bytes" }
        var value = Double(byteCount)
        var unitIndex = -1
        while value >= 1024 && unitIndex < units.count - 1 {
            value /= 1024
            unitIndex += 1
        }
        let rounded = (value * 10).rounded() / 10
        let text =
            rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return "\(text) \(units[unitIndex])"
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" {
            scalars = scalars.dropFirst()
        }
        while let last = scalars.last, last == " " || last == "\t" { scalars = scalars.dropLast() }
        return String(scalars)
    }
}
