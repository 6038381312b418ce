// Creating a store: written under a temporary name, synced, then linked into place so a
// crash never leaves a half-made store under the real name, and an existing file is never replaced.

import CowFormat
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

extension StoreFile {
    /// What `create` needs to know.
    public struct CreateOptions: Sendable {
        public var geometry: ChunkGeometry
        /// The virtual size; nil means the base's size.
        public var virtualByteCount: UInt64?
        /// Seconds since 1970, recorded in the header.
        public var createdUnixSeconds: UInt64

        public init(
            geometry: ChunkGeometry, virtualByteCount: UInt64? = nil, createdUnixSeconds: UInt64
        ) {
            self.geometry = geometry
            self.virtualByteCount = virtualByteCount
            self.createdUnixSeconds = createdUnixSeconds
        }
    }

    /// Creates a new, empty store at `path` over `base`. Refuses if `path` exists.
    /// `basePathGiven` is recorded as typed; the resolved absolute path alongside it.
    @discardableResult
    public static func create(
        at path: FilePath, base: any BlockSource, basePathGiven: String, options: CreateOptions
    ) throws -> StoreHeader {
        let virtualByteCount = options.virtualByteCount ?? base.byteCount
        guard virtualByteCount >= base.byteCount else {
            throw StoreError.invalidArgument(
                "\(path): --size \(virtualByteCount) is smaller than the base (\(base.byteCount) bytes); a disk can grow, not shrink"
            )
        }
        guard virtualByteCount > 0 else {
            throw StoreError.invalidArgument(
                "\(base.path): the base is empty; give --size to make a blank disk")
        }
        let header: StoreHeader
        do {
            header = try StoreHeader(
                geometry: options.geometry, virtualByteCount: virtualByteCount,
                baseByteCount: base.byteCount,
                baseFingerprint: try base.fingerprint(),
                fingerprintScheme: BaseFingerprintPlan.scheme,
                basePathGiven: basePathGiven, basePathResolved: absolutePath(basePathGiven).string,
                createdUnixSeconds: options.createdUnixSeconds)
        } catch let error as FormatError {
            throw StoreError.format(path: path, error)
        }
        // Checked again atomically by link(2); this early check just fails before any work.
        if access(path.string, F_OK) == 0 { throw StoreError.exists(path: path) }
        try writeAtomically(to: path, noReplace: true) { descriptor, temporaryPath in
            try descriptor.setByteCount(header.dataByteOffset + header.virtualByteCount)
            do {
                try descriptor.punchHole(
                    at: header.dataByteOffset, byteCount: header.geometry.chunkByteCount)
            } catch let error as Errno {
                throw StoreError.holePunchingUnsupported(path: path, error)
            }
            var bytes = header.encoded()
            try bytes.withUnsafeMutableBytes {
                try descriptor.writeFully(at: 0, from: UnsafeRawBufferPointer($0))
            }
        }
        return header
    }

    /// Runs `fill` on a new temporary file beside `path`, syncs it, and moves it to `path`
    /// (failing if `path` exists when `noReplace`), then syncs the folder. On any failure the
    /// temporary file is removed and `path` is untouched.
    package static func writeAtomically(
        to path: FilePath, noReplace: Bool, _ fill: (FileDescriptor, FilePath) throws -> Void
    ) throws {
        let folder = path.removingLastComponent()
        let name = path.lastComponent?.string ?? "store"
        let temporaryPath = folder.appending(".\(name).tmp.\(getpid())")
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(
                temporaryPath, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch let errno as Errno {
            // Name the file the user asked for: the temporary name means nothing to them.
            throw StoreError.open(path: path, errno)
        }
        var linked = false
        defer {
            try? descriptor.close()
            if !linked { _ = unlink(temporaryPath.string) }
        }
        do {
            try fill(descriptor, temporaryPath)
            try descriptor.synchronizeAll()
        } catch let errno as Errno {
            throw StoreError.io(path: temporaryPath, operation: "write", byteOffset: 0, errno)
        }
        if noReplace {
            // link(2) fails with EEXIST rather than replace: the no-clobber rename.
            guard link(temporaryPath.string, path.string) == 0 else {
                let failure = Errno(rawValue: errno)
                if failure == .fileExists { throw StoreError.exists(path: path) }
                throw StoreError.io(path: path, operation: "link", byteOffset: 0, failure)
            }
            linked = true
            _ = unlink(temporaryPath.string)
        } else {
            guard rename(temporaryPath.string, path.string) == 0 else {
                throw StoreError.io(
                    path: path, operation: "rename", byteOffset: 0, Errno(rawValue: errno))
            }
            linked = true
        }
        syncFolder(folder)
    }

    /// Makes a rename or link in `folder` durable. The corresponding C function is `fsync`.
    static func syncFolder(_ folder: FilePath) {
        let folderPath = folder.isEmpty ? FilePath(".") : folder
        if let descriptor = try? FileDescriptor.open(
            folderPath, .readOnly, options: [.directory, .closeOnExec])
        {
            try? descriptor.synchronizeAll()
            try? descriptor.close()
        }
    }
}

/// `path` made absolute against the current directory, with `.` and `..` resolved lexically.
func absolutePath(_ path: String) -> FilePath {
    var filePath = FilePath(path)
    if !filePath.isAbsolute {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        if getcwd(&buffer, buffer.count) != nil {
            let length = buffer.firstIndex(of: 0) ?? buffer.count
            let cwd = String(
                decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            filePath = FilePath(cwd).pushing(filePath)
        }
    }
    return filePath.lexicallyNormalized()
}
