// `cowbd check`: runs StoreCheck and prints its report. What is checked and how repairs are
// made safe lives in CowStore (StoreCheck.swift); this file only maps outcomes to exit codes.

import ArgumentParser
import CowStore
import SystemPackage

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify a store (header, bitmap, size, base); optionally repair it.",
        discussion: """
            check examines the store and reports on each part:
              header       magic, version, checksum and every field
              bitmap       no bit set past the disk's last chunk
              file size    exactly the data offset plus the disk size
              leaked data  data in chunks whose bit is clear (a note, not a problem)
              base         the base is found, with the recorded size and fingerprint

            When the base is another store (a chain), every store under this one is checked \
            the same way, without repair, and listed after it ("layer 2: ...").

            Leaked data is what a crash can leave: a write reached the store, but the server \
            stopped before its next flush recorded the chunk in the bitmap. It is harmless \
            (those chunks still read from the base, and the next write to one rewrites the \
            whole chunk) but takes space.

            Without --repair check only reads, under a shared lock: it fails (status 2) \
            while a server holds the store, rather than read a bitmap that is changing. \
            With --repair it takes the store's exclusive lock, punches leaked data, clears \
            stray bitmap bits, fixes a wrong file size when no written data is lost, and says \
            what it did. It leaves what it cannot fix: a damaged header, or a base that is \
            missing or changed (put the original image back).

            With --json, check prints one object: path, consistent, repair, problems (left \
            unfixed), chunks_total, chunks_written, leaked_chunks, leaked_bytes, \
            fingerprint_status, checked (the parts examined) and findings, each with area, \
            severity ("problem" or "note"), message, repair ("available", "done" or \
            "impossible") and repair_detail; and layers, the same for each store under it \
            (path, consistent, problems, findings).

            Exit status: 0 consistent (after any repair; notes allowed), 1 problems remain, \
            2 could not check (missing file, not a store, truncated, in use by another \
            cowbd), 64 bad usage.
            """)

    @Argument(help: ArgumentHelp("The store file.", valueName: "cow"))
    var store: String

    @Flag(
        help:
            "Fix what can be fixed safely, and say what was done. Takes the store's exclusive lock."
    )
    var repair = false

    @OptionGroup var output: OutputOptions

    func run() throws {
        let (report, lowerReports) = try exitingOnError(status: ExitStatus.cannotOpen) {
            let report = try StoreCheck.run(storePath: FilePath(store), repair: repair)
            let lowerPaths = LayerChain.list(topStorePath: FilePath(store)).dropFirst()
                .filter(\.isStore).map(\.path)
            // Lower layers are only read: other stores are built over them.
            return (report, try lowerPaths.map { try StoreCheck.run(storePath: $0, repair: false) })
        }
        if output.json {
            var object = json(report)
            if case .object(var members) = object {
                members.append(("layers", .array(lowerReports.map { json($0) })))
                object = .object(members)
            }
            print(object.rendered())
        } else {
            printText(report, name: store)
            for (index, lower) in lowerReports.enumerated() {
                print("layer \(index + 2): \(lower.path)")
                printText(lower, name: lower.path.string)
            }
        }
        let problemCount = ([report] + lowerReports).map(\.remainingProblemCount).reduce(0, +)
        guard problemCount == 0 else {
            let problems = problemCount == 1 ? "1 problem" : "\(problemCount) problems"
            printErrorLine(
                repair
                    ? "\(store): \(problems) left that --repair cannot fix"
                    : "\(store): \(problems) found")
            throw ExitStatus.problemsFound
        }
    }

    // MARK: Output

    private func printText(_ report: StoreCheckReport, name: String) {
        var rows: [(String, String)] = []
        for area in StoreCheckReport.Area.allCases {
            let label = Self.label(area)
            guard report.checkedAreas.contains(area) else {
                rows.append((label, "not checked (the header is damaged)"))
                continue
            }
            let findings = report.findings(in: area)
            if findings.isEmpty { rows.append((label, Self.okText(area, report))) }
            for (index, finding) in findings.enumerated() {
                rows.append((index == 0 ? label : "", Self.text(finding)))
            }
        }
        printAligned(rows)
        guard report.isConsistent else { return }
        let repairedCount = report.findings.count { $0.severity == .problem && $0.isRepaired }
        let noteCount = report.findings.count { $0.severity == .note }
        var verdict = "\(name): consistent"
        if repairedCount > 0 { verdict += " after repair (\(repairedCount) fixed)" }
        if noteCount > 0 { verdict += noteCount == 1 ? " (1 note)" : " (\(noteCount) notes)" }
        print(verdict)
    }

    private static func label(_ area: StoreCheckReport.Area) -> String {
        switch area {
        case .header: return "header"
        case .bitmap: return "bitmap"
        case .checkpoints: return "checkpoints"
        case .fileSize: return "file size"
        case .leakedData: return "leaked data"
        case .base: return "base"
        }
    }

    private static func okText(_ area: StoreCheckReport.Area, _ report: StoreCheckReport) -> String
    {
        switch area {
        case .bitmap:
            let chunkCount = report.header?.chunkCount ?? 0
            return "ok (\(report.writtenChunkCount) of \(chunkCount) chunks written)"
        case .checkpoints:
            return report.checkpointCount == 0 ? "none" : "ok (\(report.checkpointCount))"
        case .leakedData:
            return "none"
        case .base:
            return "ok (\(report.base?.image?.path.string ?? "?"))"
        case .header, .fileSize:
            return "ok"
        }
    }

    private static func text(_ finding: StoreCheckReport.Finding) -> String {
        let repairText: String
        switch finding.repair {
        case .available(let action): repairText = "--repair would \(action)"
        case .done(let action): repairText = "repaired: \(action)"
        case .impossible(let reason): repairText = "cannot repair: \(reason)"
        }
        return "\(finding.severity.rawValue): \(finding.message); \(repairText)"
    }

    private func json(_ report: StoreCheckReport) -> JSONValue {
        let findings = report.findings.map { finding -> JSONValue in
            let (repairState, repairDetail): (String, String)
            switch finding.repair {
            case .available(let action): (repairState, repairDetail) = ("available", action)
            case .done(let action): (repairState, repairDetail) = ("done", action)
            case .impossible(let reason): (repairState, repairDetail) = ("impossible", reason)
            }
            return .object([
                ("area", .string(finding.area.rawValue)),
                ("severity", .string(finding.severity.rawValue)),
                ("message", .string(finding.message)),
                ("repair", .string(repairState)),
                ("repair_detail", .string(repairDetail)),
            ])
        }
        return .object([
            ("path", .string(report.path == FilePath(store) ? store : report.path.string)),
            ("consistent", .bool(report.isConsistent)),
            ("repair", .bool(repair)),
            ("problems", .integer(UInt64(report.remainingProblemCount))),
            ("chunks_total", report.header.map { .integer($0.chunkCount) } ?? .null),
            ("chunks_written", .integer(report.writtenChunkCount)),
            ("leaked_chunks", .integer(report.leakedChunkCount)),
            ("leaked_bytes", .integer(report.leakedByteCount)),
            ("fingerprint_status", .optional(report.base?.summary)),
            ("checked", .array(report.checkedAreas.map { .string($0.rawValue) })),
            ("findings", .array(findings)),
        ])
    }
}
