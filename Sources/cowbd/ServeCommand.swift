// `cowbd serve`: opens the store (exclusively), verifies its base, serves it over NBD in the
// foreground until SIGTERM or SIGINT, then finishes requests in flight, flushes and cleans up.

import ArgumentParser
import CowFormat
import CowStore
import Logging
import NBDServer
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a COW store as an NBD export, in the foreground.",
        discussion: """
            Listens on 127.0.0.1:10809 unless told otherwise; several --listen may be
            given. A unix socket is created with mode 0600. Prints the NBD URI of each
            address on standard output, logs to standard error. SIGTERM or SIGINT: stop
            accepting, finish the requests in flight, flush, remove the pid file and
            socket, exit 0. A client that reconnects keeps its disk across a restart
            (an upgrade): qemu's NBD client with reconnect-delay=60, also as /dev/nbd0
            through qemu-nbd --connect (README, "Running it on a host").

            A control socket beside the store (STORE.control, mode 0600; --control PATH \
            elsewhere) lets `cowbd info`, `cowbd checkpoint` and `cowbd checkpoint --delete` \
            work on the served store (docs/CONTROL.md).

            Started by systemd (a socket unit) or another supervisor with LISTEN_PID
            and LISTEN_FDS set, it serves the sockets passed to it instead, leaves
            them listening when it stops, and refuses --listen.

            With --run, COMMAND is run with /bin/sh -c once the server listens, with
            $uri, $exportname and, on a unix socket, $unixsocket set; without --listen
            the socket is a private one in a temporary folder. Nothing is printed on
            standard output. When COMMAND exits the server stops, and cowbd exits with
            COMMAND's status (128+N if signal N killed it); SIGTERM or SIGINT to cowbd
            is passed on to COMMAND.
              cowbd serve disk.cow --read-only --run 'nbdcopy "$uri" disk.img'

            Attach it:
              nbdinfo 'nbd+unix:///?socket=/tmp/disk.sock'
              nbd-client -unix /tmp/disk.sock /dev/nbd0 -N NAME
              nbdfuse /tmp/mnt/disk 'nbd+unix:///?socket=/tmp/disk.sock'
              qemu-system-x86_64 -drive file=nbd://127.0.0.1:10809/NAME,format=raw,if=virtio
            """)

    @Argument(help: "The COW store to serve.")
    var store: String

    @Option(
        name: .customLong("listen"),
        help: "HOST:PORT, [V6]:PORT or unix:PATH (repeatable; default 127.0.0.1:10809).")
    var listen: [String] = []

    @Option(help: "The export's name (the empty name always selects it too).")
    var exportName: String = ""

    @Option(help: "A description clients may show.")
    var description: String = ""

    @Flag(help: "Refuse writes (EPERM); the store is not modified.")
    var readOnly = false

    @Flag(
        help: ArgumentHelp(
            "Serve any image (raw, compressed or a store) with writes going to a temporary "
                + "store that nothing survives: it has no name from the start (in $TMPDIR).",
            discussion: "For fsck, test boots and CI; the image is only read."))
    var ephemeral = false

    @Option(
        help: ArgumentHelp(
            "The folder of --ephemeral's temporary store (default: $TMPDIR, else /tmp).",
            valueName: "dir"))
    var ephemeralDir: String?

    /// Where --ephemeral's temporary store lives.
    private func ephemeralFolder() -> String {
        ephemeralDir ?? getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    }

    @Flag(
        help: ArgumentHelp(
            "Keep each whole base chunk a client reads in the store (hydrated).",
            discussion:
                "Hydrated chunks read the same and are left out of export-diff and merge; a "
                + "store holding every base chunk no longer needs its base (see hydrate)."))
    var copyOnRead = false

    @Option(
        name: .customLong("run"),
        help: ArgumentHelp(
            "Run COMMAND (/bin/sh -c) with $uri set; stop when it exits, with its status.",
            valueName: "command"))
    var captiveCommand: String?

    @Option(help: "Write the server's pid to this file (removed on exit).")
    var pidFile: String?

    @Option(
        help: """
            Connections served at once. At the limit a new client evicts the oldest one still \
            in its handshake; if none is, the new client is closed at accept.
            """)
    var maxConnections: Int = 64

    @Option(help: "Seconds a client has to finish the handshake.")
    var handshakeTimeout: Double = 120

    @Option(
        help: """
            Seconds a request may take to arrive once its first byte has, and a reply may wait \
            for the client to read it; then the connection is closed.
            """)
    var messageTimeout: Double = 120

    @Option(
        help: """
            Requests of one connection executed at once (default 4), and over a base on an \
            NBD server, requests waiting on the network at once besides (default 32).
            """)
    var threads: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(
        help: ArgumentHelp(
            "Memory for decompressed blocks of a compressed base, shared by all connections.",
            valueName: "size"))
    var cacheSize: String = "64M"

    @Option(
        help: ArgumentHelp(
            """
            Memory for the payloads of requests in flight, shared by all connections; a large \
            request waits for it. At least 32M, the largest request.
            """,
            valueName: "size"))
    var maxInflightBytes: String = "256M"

    @OptionGroup(title: "TLS (NBD_OPT_STARTTLS)")
    var tls: TLSOptions

    @OptionGroup var control: ControlOptions

    @Option(
        name: .customLong("metrics"),
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics (PORT alone: 127.0.0.1).",
            valueName: "host:port"))
    var metricsAddress: String?

    @OptionGroup var remoteBase: RemoteBaseOptions

    func validate() throws {
        if let metricsAddress { _ = try parseMetricsAddress(metricsAddress) }
        for address in listen { _ = try parseAddress(address) }
        guard !(copyOnRead && readOnly) else {
            throw ValidationError("--copy-on-read writes the store: it cannot be --read-only")
        }
        guard maxConnections >= 1 else {
            throw ValidationError("--max-connections must be at least 1")
        }
        if let threads, !(1...64).contains(threads) {
            throw ValidationError("--threads must be 1 to 64")
        }
        guard handshakeTimeout > 0 else {
            throw ValidationError("--handshake-timeout must be positive")
        }
        guard messageTimeout > 0 else {
            throw ValidationError("--message-timeout must be positive")
        }
        guard let cacheByteCount = try? ByteSize.parse(cacheSize), cacheByteCount <= 1 << 40 else {
            throw ValidationError("--cache-size: invalid size '\(cacheSize)' (up to 1T)")
        }
        let largestPayload = UInt64(NBDServer.Configuration().maximumPayloadByteCount)
        guard let inflightByteCount = try? ByteSize.parse(maxInflightBytes),
            inflightByteCount >= largestPayload, inflightByteCount <= 1 << 40
        else {
            throw ValidationError(
                "--max-inflight-bytes: invalid size '\(maxInflightBytes)' (32M to 1T)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown --log-level '\(logLevel)'")
        }
        guard exportName.utf8.count <= 4096, description.utf8.count <= 4096 else {
            throw ValidationError("--export-name and --description are limited to 4096 bytes")
        }
    }

    func run() throws {
        let logger = makeLogger(level: Logger.Level(rawValue: logLevel) ?? .info)
        // Signals are taken by sigwait below, so every thread started from here must block them.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        if captiveCommand != nil { sigaddset(&signals, SIGCHLD) }  // the end of COMMAND
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        signal(SIGPIPE, SIG_IGN)

        try exitingOnError {
            let passedDescriptors = try SocketActivation.takeListenDescriptors()
            if !passedDescriptors.isEmpty && !listen.isEmpty {
                throw ValidationError(
                    "--listen cannot be used with sockets passed by systemd (LISTEN_FDS)")
            }
            if !passedDescriptors.isEmpty && captiveCommand != nil {
                throw ValidationError(
                    "--run cannot be used with sockets passed by systemd (LISTEN_FDS)")
            }
            let privateFolder = try captiveCommand.flatMap { _ in
                listen.isEmpty ? try makePrivateFolder() : nil
            }
            defer { if let privateFolder { rmdir(privateFolder) } }
            var options = baseOpenOptions(
                cacheByteCount: Int((try? ByteSize.parse(cacheSize)) ?? 0), logger: logger)
            options.remote = remoteBase.settings
            let disk =
                ephemeral
                ? try VirtualDisk.openEphemeral(
                    imagePath: FilePath(store), folder: FilePath(ephemeralFolder()),
                    options: options, createdUnixSeconds: UInt64(clamping: time(nil)))
                : try VirtualDisk.open(
                    storePath: FilePath(store), readOnly: readOnly, options: options,
                    swappableLower: !readOnly)
            if copyOnRead { try disk.enableCopyOnRead() }
            var configuration = NBDServer.Configuration()
            configuration.listenAddresses = try listenAddresses(
                passedDescriptors: passedDescriptors, privateFolder: privateFolder)
            configuration.passedDescriptors = passedDescriptors
            configuration.exportName = exportName
            configuration.description = description
            configuration.maxConnections = maxConnections
            configuration.handshakeTimeoutSeconds = handshakeTimeout
            configuration.messageTimeoutSeconds = messageTimeout
            configuration.workersPerConnection = threads ?? 4
            configuration.baseWorkersPerConnection = threads ?? 32
            configuration.maxInflightByteCount = Int(
                (try? ByteSize.parse(maxInflightBytes)) ?? 256 << 20)
            configuration.tls = tls.serverConfiguration
            let server = try NBDServer(disk: disk, configuration: configuration, logger: logger)
            if let pidFile { try writePidFile(pidFile) }
            defer { if let pidFile { _ = unlink(pidFile) } }
            let control: ControlChannel?
            let metrics: MetricsEndpoint?
            let collapses = LiveCollapse(disk: server.liveDisk, options: options)
            do {
                metrics = try startMetricsEndpoint(server: server)
                control = try startControlChannel(
                    server: server, metricsURL: metrics?.url, collapses: collapses,
                    logger: logger)
            } catch {
                try? server.stop()
                throw error
            }
            defer {
                control?.stop()
                collapses.stop()
                metrics?.stop()
                // Their threads hold the disk: close it here, not when the last reference goes,
                // so a clean stop clears the checkpoints' open flag (not a crash to them).
                // (After a live snapshot, the disk over the new top.)
                server.liveDisk.current.close()
            }
            server.start()
            logger.info(
                "serving",
                metadata: [
                    "store": "\(store)", "base": "\(disk.base.locationDescription)",
                    "size": "\(disk.byteCount)",
                    "readOnly": "\(readOnly)",
                ])
            if let captiveCommand {
                throw ExitCode(
                    try runCaptive(
                        captiveCommand, server: server, addresses: configuration.listenAddresses,
                        signals: signals, logger: logger))
            }
            for uri in server.uris { print(uri) }
            fflushStandardOutput()
            var received: Int32 = 0
            sigwait(&signals, &received)
            logger.info("stopping on signal \(received)")
            try server.stop()
            logger.info("stopped; store flushed")
        }
    }

    /// What to bind: nothing beside passed sockets, a private socket for --run without
    /// --listen, the --listen addresses, or the default address.
    private func listenAddresses(passedDescriptors: [Int32], privateFolder: String?) throws
        -> [ListenAddress]
    {
        if !passedDescriptors.isEmpty { return [] }
        if let privateFolder { return [.unix(path: privateFolder + "/nbd.sock")] }
        return listen.isEmpty ? [.defaultAddress] : try listen.map(parseAddress)
    }

    private func parseAddress(_ text: String) throws -> ListenAddress {
        do { return try ListenAddress(parsing: text) } catch { throw ValidationError("\(error)") }
    }

    private func writePidFile(_ path: String) throws {
        let text = "\(getpid())\n"
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw CommandFailure("\(path): cannot write pid file: \(Errno(rawValue: errno))")
        }
        _ = text.withCString { write(descriptor, $0, strlen($0)) }
        fsync(descriptor)
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            throw CommandFailure("\(path): cannot write pid file: \(Errno(rawValue: errno))")
        }
    }
}

/// Flushes standard output so a supervisor reading the URI sees it at once.
private func fflushStandardOutput() { fflush(nil) }  // nil flushes every stream, stdout included

private struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
