// Writing a file whole or not at all (create, merge --output, export-diff, compress, and
// import-diff's record): the bytes go to a temporary file in the destination's folder, which is
// fsynced, linked or renamed into place, and then the folder is fsynced. Knows nothing of what
// the bytes are.

import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A file that appears under its name complete, or not at all.
///
/// The temporary is unnamed (`O_TMPFILE`), so a killed run leaves nothing behind; on a
/// filesystem without `O_TMPFILE` it is `.NAME.tmp.PID.RANDOM`, created with `O_EXCL`. Either
/// way, temporaries of NAME left by dead processes (this pattern, or `.NAME.tmp.PID` of older
/// versions) are removed first, so a stale one never blocks a later run.
package enum AtomicFile {
    /// `O_TMPFILE` (`__O_TMPFILE | O_DIRECTORY`), which Swift's Glibc module, built without
    /// _GNU_SOURCE, does not declare; the kernel's value on x86_64 and arm64
    /// (asm-generic/fcntl.h).
    static let openTemporaryFileFlag: Int32 = 0o20_000_000 | O_DIRECTORY

    /// Runs `fill` on a new temporary file beside `path`, fsyncs it and puts it at `path`: linked
    /// (failing with `StoreError.exists` if `path` exists) unless `replacing`, else renamed over
    /// it. Then fsyncs the folder; a failure of that fsync is thrown (the file is in place but
    /// may not survive a crash). On any failure before that, `path` is untouched and no
    /// temporary remains.
    package static func write(
        to path: FilePath, replacing: Bool,
        permissions: FilePermissions = [.ownerReadWrite, .groupRead, .otherRead],
        _ fill: (FileDescriptor) throws -> Void
    ) throws {
        let folder = folder(of: path)
        let name = path.lastComponent?.string ?? "file"
        removeStaleTemporaries(of: name, in: folder)
        var temporary = try Temporary(name: name, in: folder, permissions: permissions, for: path)
        defer { temporary.discard() }
        do {
            try fill(temporary.descriptor)
            try temporary.descriptor.synchronizeAll()
        } catch let errno as Errno {
            throw StoreError.io(path: path, operation: "write", byteOffset: 0, errno)
        }
        try temporary.place(at: path, replacing: replacing)
        try syncFolder(folder, after: path)
    }

    /// Makes a link, rename or unlink in `folder` durable. The corresponding C function is
    /// `fsync`, on the folder.
    package static func syncFolder(_ folder: FilePath, after path: FilePath) throws {
        do {
            let descriptor = try FileDescriptor.open(
                folder, .readOnly, options: [.directory, .closeOnExec])
            defer { try? descriptor.close() }
            if let fault = InjectedFault.folderSync { throw fault }
            try descriptor.synchronizeAll()
        } catch let errno as Errno {
            throw StoreError.io(
                path: folder, operation: "fsync of the folder (for \(path))", byteOffset: 0, errno)
        }
    }

    /// Runs `body` on a temporary file in `folder` that no name refers to once `body` returns
    /// (unnamed with `O_TMPFILE`, else named and unlinked at once): a probe of what the folder's
    /// filesystem allows, such as a file's largest size.
    package static func withScratchFile<Result>(
        in folder: FilePath, _ body: (FileDescriptor) throws -> Result
    ) throws -> Result {
        var temporary = try Temporary(
            name: "cowbd-probe", in: folder, permissions: .ownerReadWrite, for: folder)
        defer { temporary.discard() }
        if let namedPath = temporary.namedPath {
            _ = unlink(namedPath.string)
            temporary.namedPath = nil
        }
        return try body(temporary.descriptor)
    }

    /// The folder holding `path` ("." for a bare name).
    package static func folder(of path: FilePath) -> FilePath {
        let folder = path.removingLastComponent()
        return folder.isEmpty ? FilePath(".") : folder
    }

    /// Removes `.NAME.tmp.PID` and `.NAME.tmp.PID.RANDOM` in `folder` whose process is gone, or
    /// is this one (a run killed earlier under the same pid; this process writes one file of a
    /// name at a time). A live process's temporary is left alone. Best effort: a temporary that
    /// cannot be removed does not stop the write, whose own temporary never collides.
    static func removeStaleTemporaries(of name: String, in folder: FilePath) {
        let prefix = ".\(name).tmp."
        guard let directory = opendir(folder.string) else { return }
        defer { closedir(directory) }
        var stale: [String] = []
        while let entry = readdir(directory) {
            let entryName = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard entryName.hasPrefix(prefix) else { continue }
            let rest = entryName.dropFirst(prefix.count)
            let pidText = rest.prefix(while: { $0 != "." })
            guard let pid = pid_t(pidText), pid > 0,
                rest.count == pidText.count
                    || rest.dropFirst(pidText.count + 1).allSatisfy(\.isHexDigit)
            else { continue }
            if pid == getpid() || (kill(pid, 0) != 0 && errno == ESRCH) {
                stale.append(entryName)
            }
        }
        for entryName in stale { _ = unlink(folder.appending(entryName).string) }
    }

    /// The temporary file: unnamed until linked, or named.
    private struct Temporary {
        let descriptor: FileDescriptor
        /// The temporary's name, while it has one that is not yet the destination's.
        var namedPath: FilePath?
        let folder: FilePath
        let name: String

        init(name: String, in folder: FilePath, permissions: FilePermissions, for path: FilePath)
            throws
        {
            self.folder = folder
            self.name = name
            let raw = open(
                folder.string, AtomicFile.openTemporaryFileFlag | O_RDWR | O_CLOEXEC,
                permissions.rawValue)
            if raw >= 0 {
                descriptor = FileDescriptor(rawValue: raw)
                namedPath = nil
                return
            }
            // EISDIR: a kernel older than O_TMPFILE; EOPNOTSUPP: a filesystem without it.
            let failure = Errno(rawValue: errno)
            guard [.isDirectory, .notSupported, .invalidArgument].contains(failure) else {
                throw StoreError.open(path: path, failure)
            }
            for _ in 0..<8 {
                let candidate = Self.randomName(for: name, in: folder)
                do {
                    descriptor = try FileDescriptor.open(
                        candidate, .readWrite,
                        options: [.create, .exclusiveCreate, .closeOnExec],
                        permissions: permissions)
                    namedPath = candidate
                    return
                } catch Errno.fileExists {
                    continue
                } catch let errno as Errno {
                    // Name the file the user asked for: the temporary name means nothing to them.
                    throw StoreError.open(path: path, errno)
                }
            }
            throw StoreError.open(path: path, .fileExists)
        }

        static func randomName(for name: String, in folder: FilePath) -> FilePath {
            let suffix = String(UInt64.random(in: 1...UInt64.max), radix: 16)
            return folder.appending(".\(name).tmp.\(getpid()).\(suffix)")
        }

        /// Gives the temporary a name (an unnamed one through /proc/self/fd, which links an
        /// `O_TMPFILE` file without privileges). The corresponding C function is `linkat`.
        private func link(to destination: FilePath) -> Errno? {
            let source = namedPath?.string ?? "/proc/self/fd/\(descriptor.rawValue)"
            let flags = namedPath == nil ? AT_SYMLINK_FOLLOW : 0
            guard linkat(AT_FDCWD, source, AT_FDCWD, destination.string, flags) == 0 else {
                return Errno(rawValue: errno)
            }
            return nil
        }

        /// Puts the file at `path`. link(2) fails with EEXIST rather than replace: the no-clobber
        /// rename. Replacing goes through a name of our own, then rename(2).
        mutating func place(at path: FilePath, replacing: Bool) throws {
            if !replacing {
                if let failure = link(to: path) {
                    if failure == .fileExists { throw StoreError.exists(path: path) }
                    throw StoreError.io(path: path, operation: "link", byteOffset: 0, failure)
                }
                return
            }
            if namedPath == nil {
                let candidate = Self.randomName(for: name, in: folder)
                if let failure = link(to: candidate) {
                    throw StoreError.io(path: path, operation: "link", byteOffset: 0, failure)
                }
                namedPath = candidate
            }
            guard let namedPath, rename(namedPath.string, path.string) == 0 else {
                throw StoreError.io(
                    path: path, operation: "rename", byteOffset: 0, Errno(rawValue: errno))
            }
            self.namedPath = nil
        }

        /// Closes the descriptor and removes the temporary's own name, if it still has one.
        mutating func discard() {
            try? descriptor.close()
            if let namedPath { _ = unlink(namedPath.string) }
            namedPath = nil
        }
    }
}
