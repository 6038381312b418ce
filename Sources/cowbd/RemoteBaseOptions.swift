// Options for a base on an NBD server (`--base nbd://...`): how long reads wait through an
// outage and how much base data is kept in memory. They change nothing for a local base.

import ArgumentParser
import CowFormat
import CowStore

/// `--base-timeout` and `--base-cache-size`.
struct RemoteBaseOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            """
            For a base on an NBD server: seconds a read waits while the server is unreachable \
            (cowbd reconnects meanwhile) before it fails with EIO.
            """,
            valueName: "seconds"))
    var baseTimeout: Double = RemoteBaseSettings.defaultTimeoutSeconds

    @Option(
        help: ArgumentHelp(
            "For a base on an NBD server: memory for base data already fetched (0: none).",
            valueName: "size"))
    var baseCacheSize: String = "64M"

    func validate() throws {
        guard baseTimeout > 0 && baseTimeout <= 86400 else {
            throw ValidationError("--base-timeout must be more than 0 and at most 86400 seconds")
        }
        guard let byteCount = try? ByteSize.parse(baseCacheSize), byteCount <= 1 << 40 else {
            throw ValidationError("--base-cache-size: invalid size '\(baseCacheSize)' (up to 1T)")
        }
    }

    /// The settings the base is opened with.
    var settings: RemoteBaseSettings {
        RemoteBaseSettings(
            timeoutSeconds: baseTimeout,
            cacheByteCount: Int((try? ByteSize.parse(baseCacheSize)) ?? 0))
    }
}
