// Advisory whole-file locks (flock) between the processes that read an image as a lower
// layer and those that write it in place: readers share, a writer is alone. A lock belongs to
// the open file description, so it lasts while the source's descriptor is open.

import SystemPackage

/// The lock a block source holds on its file while it is open.
public enum SourceLock: Sendable {
    /// None: for a file this process itself holds locked (a target's own fingerprint).
    case none
    /// Shared: any number of readers (serve, create, check, merge, info) at once; a writer's
    /// exclusive lock is refused while one is held.
    case shared
    /// Exclusive: this process is about to write the file in place (`merge --in-place`).
    case exclusive
}

/// A file that could not be locked because another process holds it, named by how it is held.
public struct FileInUseError: Error, CustomStringConvertible {
    /// How the other process holds the file.
    public enum Holder: Sendable {
        /// Shared locks: the file is some store's base (or lower layer), open to read.
        case readers
        /// An exclusive lock: another cowbd writes it (`merge --in-place`, `import-diff`).
        case writer
    }

    public let path: FilePath
    public let holder: Holder

    public var description: String {
        switch holder {
        case .readers:
            return "\(path): in use as a base (by a running cowbd serve, create, check, merge "
                + "or info); refusing to change it"
        case .writer:
            return "\(path): in use by another cowbd that writes it (merge --in-place or "
                + "import-diff); refusing to use it until that finishes"
        }
    }
}

extension FileDescriptor {
    /// Takes `lock` without waiting; throws `FileInUseError` naming the holder if another
    /// process's lock conflicts. The corresponding C function is `flock(LOCK_NB)`.
    func take(_ lock: SourceLock, path: FilePath) throws {
        switch lock {
        case .none:
            return
        case .shared:
            let isLocked: Bool
            do { isLocked = try tryLock(exclusive: false) } catch {
                throw StoreError.io(path: path, operation: "flock", byteOffset: 0, error)
            }
            guard isLocked else { throw FileInUseError(path: path, holder: .writer) }
        case .exclusive:
            try lockForWriting(path: path)
        }
    }

    /// Takes the exclusive lock of a process that writes the file in place. When it cannot,
    /// a shared lock tells the holders apart: it succeeds (and is dropped) if only readers hold
    /// the file, and fails if a writer does. The corresponding C function is `flock(LOCK_NB)`.
    func lockForWriting(path: FilePath) throws {
        do {
            if try tryLock(exclusive: true) { return }
            guard try tryLock(exclusive: false) else {
                throw FileInUseError(path: path, holder: .writer)
            }
            unlock()
        } catch let errno as Errno {
            throw StoreError.io(path: path, operation: "flock", byteOffset: 0, errno)
        }
        throw FileInUseError(path: path, holder: .readers)
    }
}

extension FileDescriptor {
    /// Opens `path` read-only for a block source, holding `lock` while it is open.
    /// The corresponding C functions are `open(O_RDONLY)` and `flock(LOCK_NB)`.
    static func openLockedForReading(_ path: FilePath, lock: SourceLock) throws -> FileDescriptor {
        let descriptor = try FileDescriptor.openClosingOnExec(path, .readOnly)
        do {
            try descriptor.take(lock, path: path)
        } catch {
            try? descriptor.close()
            throw error
        }
        return descriptor
    }

    /// Opens `path` read-write for a process that writes it in place (`import-diff` into a raw
    /// image, `merge --into`), holding its exclusive lock: refused while the file is some
    /// store's base or another writer's target. The corresponding C functions are `open` and
    /// `flock(LOCK_EX | LOCK_NB)`.
    static func openLockedForWriting(_ path: FilePath) throws -> FileDescriptor {
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(path, .readWrite, options: [.closeOnExec])
        } catch {
            throw StoreError.open(path: path, error as? Errno ?? .ioError)
        }
        do {
            try descriptor.lockForWriting(path: path)
        } catch {
            try? descriptor.close()
            throw error
        }
        return descriptor
    }
}
