// One status line on stderr that rewrites itself (carriage return, erase to end of line), for
// long commands run from a terminal, and one that progress callbacks redraw at a bounded rate.
// Silent when stderr is not a terminal: logs stay clean.

import CowSupport

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

/// A status line for progress callbacks, which come far more often than anyone can read: it
/// is redrawn at most every `intervalSeconds`, and its text is only built when it is.
final class ThrottledStatusLine {
    private let line = StatusLine()
    private let intervalSeconds: Double
    private var lastShownSeconds = 0.0

    init(intervalSeconds: Double = 0.25) { self.intervalSeconds = intervalSeconds }

    /// Replaces the line with `text`, unless it was drawn less than `intervalSeconds` ago and
    /// `force` is false (the last step of a run, say).
    func show(force: Bool = false, _ text: () -> String) {
        let now = monotonicSeconds()
        guard line.isEnabled, force || now - lastShownSeconds >= intervalSeconds else { return }
        lastShownSeconds = now
        line.show(text())
    }

    /// Erases the line, leaving the cursor at its start.
    func clear() { line.clear() }
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
