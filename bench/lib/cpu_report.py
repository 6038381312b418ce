"""Tables for bench/cpu-per-request from its raw/results.txt.

Instructions per request (callgrind, user space only) and the server's CPU per GiB moved (perf
stat task-clock, with the user/system split from /proc), one row per job, one column per
target, then each target's ratio to the first target (the "before").
"""

import sys

JOB_ORDER = [
    "seq-read",
    "rand-read",
    "rand-write",
    "seq-write",
    "seq-write-flush",
    "read-after-write",
]
GIB = 1 << 30


def parse(path):
    header, targets, instructions, cpu = [], [], {}, {}
    with open(path) as lines:
        for line in lines:
            words = line.split()
            if not words:
                continue
            if words[0] == "target":
                targets.append(words[1])
                header.append(f"- {words[1]}: {' '.join(words[2:])}")
            elif words[0] in ("started", "finished", "remote") or words[0].startswith(
                ("started=", "finished=")
            ):
                header.append(f"- {line.strip()}")
            elif words[0] in ("instructions", "cpu"):
                fields = dict(word.split("=", 1) for word in words[3:])
                table = instructions if words[0] == "instructions" else cpu
                table[(words[1], words[2])] = fields
    return header, targets, instructions, cpu


def number(value, digits=0):
    return f"{value:,.{digits}f}"


def ratio_columns(targets):
    return [f"{target} ÷ {targets[0]}" for target in targets[1:]]


def instruction_table(targets, instructions):
    jobs = [job for job in JOB_ORDER if any((t, job) in instructions for t in targets)]
    if not jobs:
        return []
    rows = [
        "## User-space instructions per request (callgrind)",
        "",
        "| job | " + " | ".join(targets + ratio_columns(targets)) + " |",
        "|---|" + "---|" * (2 * len(targets) - 1),
    ]
    for job in jobs:
        values = [
            int(instructions[(t, job)]["per_request"]) if (t, job) in instructions else None
            for t in targets
        ]
        cells = [number(v) if v is not None else "" for v in values]
        for value in values[1:]:
            cells.append(
                f"{value / values[0]:.2f}" if value is not None and values[0] else ""
            )
        rows.append(f"| {job} | " + " | ".join(cells) + " |")
    return rows + [""]


def cpu_table(targets, cpu):
    jobs = [job for job in JOB_ORDER if any((t, job) in cpu for t in targets)]
    if not jobs:
        return []
    rows = [
        "## Server CPU per GiB moved (perf stat task-clock; user/system from /proc)",
        "",
        "CPU s/GiB, then user + system s/GiB, then µs of CPU per request. Wall-clock MiB/s",
        "with the load average at the start of the job: noise on a busy machine.",
        "",
        "| job | "
        + " | ".join(
            f"{t} CPU s/GiB | {t} user+sys | {t} µs/request | {t} MiB/s (load)"
            for t in targets
        )
        + " | "
        + " | ".join(f"{c} (CPU/GiB)" for c in ratio_columns(targets))
        + " |",
        "|---|" + "---|" * (5 * len(targets) - 1),
    ]
    for job in jobs:
        cells, per_gib = [], []
        for target in targets:
            fields = cpu.get((target, job))
            if fields is None:
                cells += ["", "", "", ""]
                per_gib.append(None)
                continue
            gib = int(fields["bytes"]) / GIB
            seconds = float(fields["task_clock_ms"]) / 1000
            ticks = int(fields["ticks_per_second"])
            user = int(fields["user_ticks"]) / ticks
            system = int(fields["system_ticks"]) / ticks
            wall = int(fields["wall_ns"]) / 1e9
            per_gib.append(seconds / gib)
            cells += [
                number(seconds / gib, 3),
                f"{user / gib:.2f} + {system / gib:.2f}",
                number(seconds * 1e6 / int(fields["requests"]), 1),
                f"{int(fields['bytes']) / 1048576 / wall:,.0f} ({fields['load']})",
            ]
        for value in per_gib[1:]:
            cells.append(f"{value / per_gib[0]:.2f}" if value is not None and per_gib[0] else "")
        rows.append(f"| {job} | " + " | ".join(cells) + " |")
    return rows + [""] + per_request_table(targets, cpu, jobs)


def per_request_table(targets, cpu, jobs):
    """Context switches per request, and (over a network base) the base server's share."""
    has_switches = any("context_switches" in fields for fields in cpu.values())
    has_base = any("base_task_clock_ms" in fields for fields in cpu.values())
    if not has_switches:
        return []
    columns = [f"{t} switches/request" for t in targets]
    if has_base:
        columns += [f"base server µs/request ({t})" for t in targets]
        columns += [f"base server switches/request ({t})" for t in targets]
    rows = [
        "## Per request: the server's context switches"
        + (", and the base server's CPU and switches" if has_base else "")
        + " (perf stat)",
        "",
        "| job | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for job in jobs:
        switches, base_cpu, base_switches = [], [], []
        for target in targets:
            fields = cpu.get((target, job))
            if fields is None or not fields.get("context_switches"):
                switches.append("")
                base_cpu.append("")
                base_switches.append("")
                continue
            requests = int(fields["requests"])
            switches.append(number(int(fields["context_switches"]) / requests, 2))
            if fields.get("base_task_clock_ms"):
                base_cpu.append(number(float(fields["base_task_clock_ms"]) * 1e3 / requests, 1))
                base_switches.append(
                    number(int(fields["base_context_switches"]) / requests, 2)
                )
            else:
                base_cpu.append("")
                base_switches.append("")
        cells = switches + (base_cpu + base_switches if has_base else [])
        rows.append(f"| {job} | " + " | ".join(cells) + " |")
    return rows + [""]


def main():
    header, targets, instructions, cpu = parse(sys.argv[1])
    lines = ["# Server cost per request", ""] + header + [""]
    lines += instruction_table(targets, instructions)
    lines += cpu_table(targets, cpu)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
