// The result of checking a store: what was examined and every finding, each with what a
// repair did or could do. Plain values: printing them is the CLI's job.

import CowFormat
import SystemPackage

/// What `StoreCheck.run` found in one store.
public struct StoreCheckReport: Sendable {
    /// The parts of a store that check examines, in the order it examines them.
    public enum Area: String, Sendable, CaseIterable {
        case header
        case bitmap
        case checkpoints
        case fileSize = "file_size"
        case leakedData = "leaked_data"
        case base
    }

    /// How much a finding matters.
    public enum Severity: String, Sendable {
        /// The store is damaged or unusable until this is dealt with.
        case problem
        /// Worth knowing, harmless to the data (leaked chunks).
        case note
    }

    /// What a repair can do, or did, about a finding.
    public enum Repair: Sendable, Equatable {
        /// What `--repair` would do.
        case available(String)
        /// What the repair did.
        case done(String)
        /// Why the tool cannot fix it, and what the user can do instead.
        case impossible(String)
    }

    /// One thing that is not as the format requires (docs/FORMAT.md).
    public struct Finding: Sendable {
        public var area: Area
        public var severity: Severity
        /// One line, without the store's path.
        public var message: String
        public var repair: Repair

        /// Whether the repair fixed it.
        public var isRepaired: Bool {
            if case .done = repair { return true }
            return false
        }
    }

    /// The store checked.
    public var path: FilePath
    /// The parsed header; nil when it is damaged (then nothing past the header was checked).
    public var header: StoreHeader?
    /// The areas examined, in order; a damaged header stops the check after `.header`.
    public var checkedAreas: [Area] = []
    public var findings: [Finding] = []
    /// Checkpoints the store holds, after any repair.
    public var checkpointCount = 0
    /// Chunks whose bit is set, after any repair.
    public var writtenChunkCount: UInt64 = 0
    /// Chunks with data allocated while their bit is clear (before any repair).
    public var leakedChunkCount: UInt64 = 0
    /// Bytes of that leaked data.
    public var leakedByteCount: UInt64 = 0
    /// The base as found; nil when the check stopped before looking for it.
    public var base: BaseStatus?

    public init(path: FilePath) {
        self.path = path
    }

    /// Problems the repair did not fix (all of them without `--repair`).
    public var remainingProblemCount: Int {
        findings.count { $0.severity == .problem && !$0.isRepaired }
    }

    /// Whether the store is usable as it stands: no remaining problems (notes allowed).
    public var isConsistent: Bool { remainingProblemCount == 0 }

    /// The findings about `area`.
    public func findings(in area: Area) -> [Finding] { findings.filter { $0.area == area } }

    mutating func add(_ area: Area, _ severity: Severity, _ message: String, _ repair: Repair) {
        findings.append(Finding(area: area, severity: severity, message: message, repair: repair))
    }
}
