// Captive mode, `serve --run COMMAND` (as nbdkit --run): COMMAND runs with /bin/sh -c once the
// server listens, with the URI in its environment, and its end becomes cowbd's exit status.
// Serving itself stays in ServeCommand.swift; this file only starts, waits for and reports on
// the command.

import Logging
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension ServeCommand {
    /// Runs COMMAND against the started `server`, then stops the server (finishing requests
    /// and flushing); returns COMMAND's exit status. A failed final flush throws instead, so
    /// cowbd never reports success over a store it could not flush.
    func runCaptive(
        _ text: String, server: NBDServer, addresses: [ListenAddress], signals: sigset_t,
        logger: Logger
    ) throws -> Int32 {
        var variables = ["uri": server.uris.first ?? "", "exportname": exportName]
        for case .unix(let path) in addresses where variables["unixsocket"] == nil {
            variables["unixsocket"] = path
        }
        let command: CaptiveCommand
        do {
            command = try CaptiveCommand.start(text, variables: variables)
        } catch {
            try? server.stop()
            throw error
        }
        logger.info("running the --run command", metadata: ["pid": "\(command.processID)"])
        let status = command.waitForExit(forwarding: signals, logger: logger)
        try server.stop()
        logger.info("stopped; store flushed", metadata: ["status": "\(status)"])
        return status
    }

    /// A new folder only this user can enter, for the private socket of `--run` without
    /// `--listen`: `$TMPDIR/cowbd-run.XXXXXX` (or /tmp). The corresponding C function is `mkdtemp`.
    func makePrivateFolder() throws -> String {
        let parent = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        var template = Array(((parent ?? "/tmp") + "/cowbd-run.XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else {
            throw CaptiveFailure(
                "\(parent ?? "/tmp"): cannot make a folder for the --run socket: "
                    + "\(Errno(rawValue: errno))")
        }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The process of a `--run` COMMAND.
struct CaptiveCommand {
    let processID: pid_t

    /// Starts `/bin/sh -c TEXT` with `variables` added to cowbd's environment and cowbd's
    /// standard streams. cowbd blocks SIGTERM, SIGINT and SIGCHLD and ignores SIGPIPE; the
    /// command starts with no signal blocked and those at their defaults, as from a shell.
    /// The corresponding C function is `posix_spawn`.
    static func start(_ text: String, variables: [String: String]) throws -> CaptiveCommand {
        var environment: [String] = []
        if var entry = Optional(environ) {
            while let pointer = entry.pointee {
                let line = String(cString: pointer)
                let name = line.prefix { $0 != "=" }
                if variables[String(name)] == nil { environment.append(line) }
                entry += 1
            }
        }
        environment += variables.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGCHLD] { sigaddset(&defaultSignals, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var processID: pid_t = 0
        let status = withCStringArray(["sh", "-c", text]) { arguments in
            withCStringArray(environment) { environment in
                posix_spawn(&processID, "/bin/sh", nil, &attributes, arguments, environment)
            }
        }
        guard status == 0 else {
            throw CaptiveFailure(
                "/bin/sh: cannot start the --run command: \(Errno(rawValue: status))")
        }
        return CaptiveCommand(processID: processID)
    }

    /// Waits for the command to end, passing SIGTERM and SIGINT sent to cowbd on to it, and
    /// returns the status cowbd exits with: the command's own, or 128+N when signal N killed it
    /// (as a shell reports it). `signals` are blocked in every thread and include SIGCHLD; the
    /// one-second limit on each wait only bounds a lost SIGCHLD.
    /// The corresponding C functions are `sigtimedwait` and `waitpid`.
    func waitForExit(forwarding signals: sigset_t, logger: Logger) -> Int32 {
        var signals = signals
        while true {
            var waitStatus: Int32 = 0
            let result = waitpid(processID, &waitStatus, WNOHANG)
            if result == processID {
                let signalNumber = waitStatus & 0x7f
                if signalNumber == 0 { return (waitStatus >> 8) & 0xff }
                logger.warning("the --run command was killed by signal \(signalNumber)")
                return 128 + signalNumber
            }
            if result < 0 && errno != EINTR {
                logger.error("cannot wait for the --run command: \(Errno(rawValue: errno))")
                return 1
            }
            var timeout = timespec(tv_sec: 1, tv_nsec: 0)
            let received = sigtimedwait(&signals, nil, &timeout)
            if received == SIGTERM || received == SIGINT {
                logger.info("passing signal \(received) on to the --run command")
                kill(processID, received)
            }
        }
    }
}

/// Runs `body` with `strings` as a NULL-terminated array of C strings (argv, envp).
private func withCStringArray<Result>(
    _ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> Result
) -> Result {
    let copies = strings.map { strdup($0) }
    defer { for copy in copies { free(copy) } }
    return body(copies + [nil])
}

/// A `--run` failure, with its one-line message.
private struct CaptiveFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
