// systemd socket activation without libsystemd: a supervisor that already listens passes its
// sockets as descriptors 3, 4, ... and says so in LISTEN_PID and LISTEN_FDS (sd_listen_fds(3)).
// Only the protocol's variables are read here; the sockets themselves are checked by Listener.
// LISTEN_FDNAMES is not used: every socket serves the same export.

#if canImport(Glibc)
    import Glibc
#endif

/// The descriptors a supervisor passed to this process (systemd, `systemd-socket-activate`,
/// libnbd's `nbd_connect_systemd_socket_activation`).
public enum SocketActivation {
    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3
    /// More passed sockets than this is a broken environment, not a configuration.
    public static let maxDescriptorCount = 64

    /// Reads LISTEN_PID and LISTEN_FDS, then unsets them and LISTEN_FDNAMES so no command cowbd
    /// starts takes the sockets for its own. Call it before starting threads (`unsetenv` is
    /// not thread-safe). The corresponding C function is `sd_listen_fds(unset_environment: 1)`.
    public static func takeListenDescriptors() throws(ServerError) -> [Int32] {
        let listenPID = getenv("LISTEN_PID").map { String(cString: $0) }
        let listenFDs = getenv("LISTEN_FDS").map { String(cString: $0) }
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        return try descriptors(listenPID: listenPID, listenFDs: listenFDs, processID: getpid())
    }

    /// The passed descriptors the variables describe for process `processID`: none when either
    /// is unset or LISTEN_PID names another process (variables a parent forgot to unset);
    /// throws when a value is not a number or the count is over `maxDescriptorCount`.
    public static func descriptors(listenPID: String?, listenFDs: String?, processID: Int32)
        throws(ServerError) -> [Int32]
    {
        guard let listenPID, let listenFDs else { return [] }
        guard let pid = Int32(listenPID), pid > 0 else {
            throw .invalidAddress("LISTEN_PID=\(listenPID)", "not a process id")
        }
        guard pid == processID else { return [] }
        guard let count = Int(listenFDs), count >= 0, count <= maxDescriptorCount else {
            throw .invalidAddress(
                "LISTEN_FDS=\(listenFDs)", "not a count of 0 to \(maxDescriptorCount) sockets")
        }
        return (0..<count).map { firstDescriptor + Int32($0) }
    }
}
