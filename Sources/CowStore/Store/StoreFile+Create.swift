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
                basePathGiven: basePathGiven,
                // A URI is where the base is wherever the store goes: recorded as given.
                basePathResolved: NBDBaseImage.isURI(basePathGiven)
                    ? basePathGiven : absolutePath(basePathGiven).string,
                createdUnixSeconds: options.createdUnixSeconds)
        } catch let error as FormatError {
            throw StoreError.format(path: path, error)
        }
        // Checked again atomically by link(2); this early check just fails before any work.
        if access(path.string, F_OK) == 0 { throw StoreError.exists(path: path) }
        try AtomicFile.write(to: path, replacing: false) { descriptor in
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
}

/// `path` made absolute against the current directory, with `.` and `..` resolved lexically.
package func absolutePath(_ path: String) -> FilePath {
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
