// What `info` shows about a store, and `create --json` about the store it made: as text
// rows and as JSON with stable snake_case keys. Loading takes no lock and survives a
// missing or changed base (it reports it).

import CowFormat
import CowStore
import SystemPackage

/// A store's vital numbers and the state of its base.
struct StoreSummary {
    /// The store's path as the user gave it.
    var path: String
    var header: StoreHeader
    /// Chunks whose bit is set on disk (a running server's as of its last flush).
    var writtenChunkCount: UInt64
    /// Bytes allocated in the data region (`StoreFile.allocatedDataByteCount`).
    var allocatedByteCount: UInt64
    var base: BaseStatus
    var checkpoints: CheckpointListing?
    /// The layers from this store down to the bottom image (`LayerChain.list`).
    var chain: [ChainLayer] = []
    /// Chunks holding a copy of the base's bytes, and whether every base chunk is in the store.
    var hydratedChunkCount: UInt64 = 0
    var isSelfContained = false

    /// The JSON `info --json` prints; keys are documented in `cowbd info --help`.
    var json: JSONValue {
        .object([
            ("size", .integer(header.virtualByteCount)),
            ("chunk_size", .integer(header.geometry.chunkByteCount)),
            ("chunks_total", .integer(header.chunkCount)),
            ("chunks_written", .integer(writtenChunkCount)),
            ("allocated_bytes", .integer(allocatedByteCount)),
            ("base", .optional(base.image?.locationDescription)),
            ("base_given", .string(header.basePathGiven)),
            ("base_resolved", .string(header.basePathResolved)),
            ("base_kind", .optional(base.image?.kindName)),
            ("base_size", .integer(header.baseByteCount)),
            ("base_fingerprint", .string(header.baseFingerprint.description)),
            ("fingerprint_status", .string(base.summary)),
            ("format_version", .integer(UInt64(header.version))),
            ("created", .string(iso8601(unixSeconds: header.createdUnixSeconds))),
            ("checkpoints", checkpoints?.json ?? .array([])),
            ("chain", .array(chain.map(Self.json(of:)))),
            ("chunks_hydrated", .integer(hydratedChunkCount)),
            ("self_contained", .bool(isSelfContained)),
        ])
    }

    /// One layer of `chain`: path, kind and size always; a store's chunk size, chunks written
    /// and frozen flag; the problem where the chain breaks.
    private static func json(of layer: ChainLayer) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("path", .string(layer.path.string)),
            ("kind", .string(layer.kind)),
            ("size", layer.byteCount.map { .integer($0) } ?? .null),
        ]
        if layer.isStore {
            members += [
                ("chunk_size", layer.chunkByteCount.map { .integer($0) } ?? .null),
                ("chunks_written", layer.writtenChunkCount.map { .integer($0) } ?? .null),
                ("frozen", .bool(layer.isFrozen)),
            ]
        }
        if let problem = layer.problem { members.append(("problem", .string(problem))) }
        return .object(members)
    }

    /// "top.cow: cow, 1 GiB, 12 chunks written", one per layer, top first.
    private var chainRows: [(String, String)] {
        chain.enumerated().map { index, layer in
            var text = "\(layer.path): \(layer.kind)"
            if let byteCount = layer.byteCount { text += ", \(ByteSize.describe(byteCount))" }
            if let written = layer.writtenChunkCount { text += ", \(written) chunks written" }
            if layer.isFrozen { text += ", frozen" }
            if let problem = layer.problem { text += ": \(problem)" }
            return (index == 0 ? "chain" : "", "\(index + 1). " + text)
        }
    }

    /// The "key: value" rows `info` prints.
    var rows: [(String, String)] {
        let basePath: String
        switch base {
        case .missing(let tried): basePath = "not found (tried \(tried.joined(separator: ", ")))"
        case .unreadable: basePath = "unreadable"
        case .ok(let image), .changed(let image, _): basePath = image.locationDescription
        }
        return [
            ("store", path),
            ("size", describeSize(header.virtualByteCount)),
            ("chunk size", describeSize(header.geometry.chunkByteCount)),
            (
                "chunks",
                "\(header.chunkCount) total, \(writtenChunkCount) written, "
                    + "\(hydratedChunkCount) hydrated"
            ),
            (
                "self-contained",
                isSelfContained
                    ? "yes (every base chunk is in the store; the base is not needed)" : "no"
            ),
            ("allocated", describeSize(allocatedByteCount)),
            ("base", basePath),
            ("base given", header.basePathGiven),
            ("base resolved", header.basePathResolved),
            ("base kind", base.image?.kindName ?? "unknown"),
            ("base size", describeSize(header.baseByteCount)),
            ("base fingerprint", header.baseFingerprint.description),
            ("fingerprint status", base.summary),
            ("format version", String(header.version)),
            ("created", iso8601(unixSeconds: header.createdUnixSeconds)),
            ("checkpoints", checkpointSummary),
        ] + chainRows
    }

    /// "none", or "monday (2026-11-25T10:00:00Z, 12 chunks changed since), ...".
    private var checkpointSummary: String {
        guard let checkpoints, !checkpoints.entries.isEmpty else { return "none" }
        return zip(checkpoints.entries, checkpoints.rows).map { entry, row in
            "\(entry.checkpoint.name) (\(row.1))"
        }.joined(separator: ", ")
    }
}

extension StoreSummary {
    /// Reads the store at `path` without locking it, so it works while a server runs.
    init(storePath path: String) throws {
        let store = try StoreFile(path: FilePath(path), access: .unlockedRead)
        defer { store.close() }
        self.init(
            path: path, header: store.header, writtenChunkCount: store.writtenChunkCount,
            allocatedByteCount: try store.allocatedDataByteCount(),
            base: BaseStatus(
                header: store.header, storePath: FilePath(path), options: baseOpenOptions()))
        checkpoints = CheckpointListing(store)
        chain = LayerChain.list(topStorePath: FilePath(path))
        hydratedChunkCount = store.hydratedChunkCount
        isSelfContained = store.hasHydration && store.isSelfContained
    }
}
