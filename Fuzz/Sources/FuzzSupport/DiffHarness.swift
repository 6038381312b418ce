// The import of one diff, as `cowbd import-diff --force` runs it, into a small raw image:
// the verifying pass always, the applying pass when the diff's disk is small.

import CowStore
import SystemPackage

/// Scratch files for a diff and the raw image it is applied to, reused across inputs.
public final class DiffHarness: Sendable {
    /// Largest disk an input may make the target grow to: applying writes it.
    public static let maxAppliedByteCount: UInt64 = 4 << 20
    /// Size of the raw target before each input (a sparse file).
    public static let targetByteCount: UInt64 = 1 << 20

    let diff = ScratchFile(name: "diff")
    let target = ScratchFile(name: "target")

    public init() {}

    /// Verifies `bytes` as a diff, then applies it if its disk is at most
    /// `maxAppliedByteCount`. Errors are the expected outcome of most inputs.
    public func importDiff(_ bytes: [UInt8]) {
        diff.write(bytes)
        target.write([], extendingTo: Self.targetByteCount)
        let targetPath = FilePath(target.path)
        guard
            let summary = try? DiffImport(diffPath: diff.path, targetPath: targetPath, force: true)
                .verify(),
            summary.virtualByteCount <= Self.maxAppliedByteCount
        else { return }
        let applied = try? DiffImport(diffPath: diff.path, targetPath: targetPath, force: true)
            .run()
        // The applying pass reads the bytes the verifying pass accepted: it cannot fail on them.
        precondition(applied != nil, "a verified diff failed to apply")
        precondition(applied?.dataByteCount == summary.dataByteCount, "passes disagree")
    }
}
