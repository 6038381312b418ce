// What became of a store's base image since the store was made: the one answer `info` and
// `check` both report. Never throws: a missing or changed base is a finding, not an error.

import CowFormat
import SystemPackage

/// The state of a store's base image as found now (docs/FORMAT.md, "Base lookup").
public enum BaseStatus: Sendable {
    /// Found, with the size and content fingerprint the store recorded.
    case ok(any BlockSource)
    /// Found, but its size or content fingerprint differs from the store's record.
    case changed(any BlockSource, detail: String)
    /// Not found at any of the paths tried.
    case missing(tried: [String])
    /// Found but not readable (permissions, an I/O error); `reason` names the file.
    case unreadable(reason: String)

    /// Looks for the base `header` names and compares it with the record.
    public init(header: StoreHeader, storePath: FilePath, options: BaseOpenOptions = .quiet) {
        let base: any BlockSource
        do {
            base = try BaseLocator.openBase(for: header, storePath: storePath, options: options)
        } catch StoreError.baseMissing(_, let tried) {
            self = .missing(tried: tried)
            return
        } catch {
            self = .unreadable(reason: "\(error)")
            return
        }
        do {
            try BaseLocator.verify(base, against: header, storePath: storePath)
            self = .ok(base)
        } catch StoreError.baseMismatch(_, _, let detail) {
            self = .changed(base, detail: detail)
        } catch {
            self = .unreadable(reason: "\(error)")
        }
    }

    /// The image, when one was found (even a changed one).
    public var image: (any BlockSource)? {
        switch self {
        case .ok(let image), .changed(let image, _): return image
        case .missing, .unreadable: return nil
        }
    }

    /// Whether the base can be used: found and unchanged.
    public var isOK: Bool {
        if case .ok = self { return true }
        return false
    }

    /// "ok", "changed: <detail>", "missing" or "unreadable: <reason>": `info`'s fingerprint
    /// status.
    public var summary: String {
        switch self {
        case .ok: return "ok"
        case .changed(_, let detail): return "changed: \(detail)"
        case .missing: return "missing"
        case .unreadable(let reason): return "unreadable: \(reason)"
        }
    }
}
