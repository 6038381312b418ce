// How cowbd's commands fail: one line on stderr naming the file and the problem, then a
// non-zero exit status. Nothing here decides what counts as an error; commands do.

import ArgumentParser
import CowFormat
import CowStore

#if canImport(Glibc)
    import Glibc
#endif

/// Exit statuses shared by the subcommands (each command's help lists the ones it uses).
enum ExitStatus {
    /// The command failed (create, info).
    static let failure = ExitCode(1)
    /// `check`: problems found.
    static let problemsFound = ExitCode(1)
    /// `check`: the file could not be checked at all.
    static let cannotOpen = ExitCode(2)
    /// A bad option value, as for argument-parser's own usage errors (EX_USAGE).
    static let usage = ExitCode.validationFailure
}

/// Writes `cowbd: <message>` and a newline to stderr, folding any newline into a space so
/// the message stays one line. The corresponding C function is `write(2)`.
func printErrorLine(_ message: String) {
    let line = "cowbd: " + message.replacing("\n", with: " ") + "\n"
    let bytes = Array(line.utf8)
    var done = 0
    while done < bytes.count {
        let result = bytes.withUnsafeBytes { buffer in
            guard let start = buffer.baseAddress else { return 0 }
            return write(STDERR_FILENO, start + done, buffer.count - done)
        }
        if result > 0 {
            done += result
        } else if result < 0 && errno == EINTR {
            continue
        } else {
            return
        }
    }
}

/// The one-line text for an error: the library's own description, without Swift type names.
func errorLine(_ error: any Error) -> String {
    switch error {
    case let error as StoreError: return error.description
    case let error as FormatError: return error.description
    case let error as ValidationError: return error.message
    default: return String(describing: error)
    }
}

/// Runs `body`; if it throws, prints the error as one line on stderr and exits with `status`.
/// `ExitCode` passes through untouched: whoever threw it has already said why.
func exitingOnError<Result>(status: ExitCode = ExitStatus.failure, _ body: () throws -> Result)
    throws -> Result
{
    do {
        return try body()
    } catch let exitCode as ExitCode {
        throw exitCode
    } catch {
        printErrorLine(errorLine(error))
        throw status
    }
}
