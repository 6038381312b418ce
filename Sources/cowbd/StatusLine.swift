// One status line on stderr that rewrites itself (carriage return, erase to end of line), for
// long commands run from a terminal. Silent when stderr is not a terminal: logs stay clean.

#if canImport(Glibc)
    import Glibc
#endif

/// A self-updating line on stderr, shown only on a terminal.
struct StatusLine {
    /// Whether stderr is a terminal. The corresponding C function is `isatty`.
    let isEnabled = isatty(STDERR_FILENO) == 1

    /// Replaces the line with `text`.
    func show(_ text: String) {
        guard isEnabled else { return }
        writeStandardError("\r" + text + "\u{1B}[K")
    }

    /// Erases the line, leaving the cursor at its start.
    func clear() {
        guard isEnabled else { return }
        writeStandardError("\r\u{1B}[K")
    }
}

/// Writes `text` to stderr as it is (no prefix, no newline). The corresponding C function is
/// `write(2)`.
private func writeStandardError(_ text: String) {
    let bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
        let result = bytes.withUnsafeBytes { buffer in
            write(STDERR_FILENO, buffer.baseAddress! + done, buffer.count - done)
        }
        if result > 0 {
            done += result
        } else if !(result < 0 && errno == EINTR) {
            return
        }
    }
}
