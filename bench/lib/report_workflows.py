"""The sections of a bench run measured as whole workflows rather than fio jobs: kernel (ext4
through nbdfuse and a loop device), diff (merge and export-diff against qemu-img) and scale
(a 1 TiB disk). Their records, markdown and progress lines, for report_sections.py."""

from pathlib import Path

import report_jobs
from report_jobs import COWBD, GIB, MIB, format_number, ratio_text, read_env

# --- kernel ---------------------------------------------------------------------------------

KERNEL_STEPS = ("attach", "mkfs", "mount", "untar", "sync", "umount", "total")


def kernel_record(path):
    env = read_env(path)
    ticks_per_second = int(env["clock_ticks_per_second"])
    record = {step: int(env[f"{step}_ns"]) / 1e9 for step in KERNEL_STEPS}
    record["tree_bytes"] = int(env["tree_bytes"])
    record["server_cpu_seconds"] = (int(env["server_cpu_ticks_after"])
                                    - int(env["server_cpu_ticks_before"])) / ticks_per_second
    record["server_cpu_seconds_per_gib"] = record["server_cpu_seconds"] \
        / (record["tree_bytes"] / GIB)
    record["server_peak_rss_mib"] = int(env["server_peak_rss_kib"]) / 1024
    machine_seconds = (int(env["machine_busy_ticks_after"])
                       - int(env["machine_busy_ticks_before"])) / ticks_per_second
    record["machine_busy_percent"] = 100 * machine_seconds \
        / (record["total"] * int(env["cpu_count"]))
    record["overlay_allocated_bytes"] = int(env["overlay_allocated_bytes_after"]) \
        - int(env["overlay_allocated_bytes_before"]) \
        if "overlay_allocated_bytes_after" in env else None
    return record


def kernel_markdown(section, meta):
    lines = ["## Kernel path: ext4 through nbdfuse and a loop device", ""]
    if section.get("skipped"):
        return lines + [f"Skipped: {section['skipped']}.", ""]
    tree_mib = int(meta["kernel.tree_bytes"]) / MIB
    lines += [f"- `nbdfuse` (its default connections) shows the export as a file, `losetup` "
              f"makes it /dev/loopN; then `mkfs.ext4`, `mount`, `tar -x` of {tree_mib:.0f} MiB "
              "of system files, `sync -f` and `umount`, each timed; fresh overlay per target.",
              "",
              "| target | " + " | ".join(f"{step} s" for step in KERNEL_STEPS)
              + " | untar+sync MiB/s | server CPU s | server CPU s/GiB | peak RSS MiB "
              "| overlay MiB | target ÷ cowbd (total time) | machine busy % |",
              "|" + "---|" * (len(KERNEL_STEPS) + 8)]
    results = section["results"]
    cowbd = results.get(COWBD)
    for target, record in results.items():
        cells = [format_number(record[step], 2) for step in KERNEL_STEPS]
        overlay = record["overlay_allocated_bytes"]
        lines.append(
            f"| {target} | " + " | ".join(cells) + " | "
            + format_number(record["tree_bytes"] / MIB / (record["untar"] + record["sync"]), 1)
            + f" | {format_number(record['server_cpu_seconds'], 2)}"
            f" | {format_number(record['server_cpu_seconds_per_gib'], 2)}"
            f" | {format_number(record['server_peak_rss_mib'], 1)}"
            f" | {format_number(overlay / MIB if overlay is not None else None, 1)}"
            f" | {ratio_text(record['total'], cowbd['total']) if cowbd else 'n/a'}"
            f" | {format_number(record['machine_busy_percent'])} |")
    return lines + [""]


def kernel_line(path, target):
    record = kernel_record(Path(path))
    print(f"   {target:14} " + "  ".join(f"{step} {record[step]:.2f} s"
                                          for step in KERNEL_STEPS)
          + f"  CPU {record['server_cpu_seconds']:.2f} s"
          f"  RSS {record['server_peak_rss_mib']:.1f} MiB")


# --- diff -----------------------------------------------------------------------------------

# (task, cowbd step, qemu-img step): the steps diff.sh records.
DIFF_ROWS = (
    ("changes as a file (native diff)", "export_native", "qemu_convert_overlay"),
    ("changes as a file (rbd diff)", "export_rbd", "qemu_convert_overlay"),
    ("new flat image", "merge_output", "qemu_convert_flat"),
    ("into a copy of the base", "merge_into", "qemu_commit"),
)


DIFF_STEP_LABELS = {
    "export_native": "cowbd export-diff",
    "export_rbd": "cowbd export-diff --format rbd",
    "qemu_convert_overlay": "qemu-img convert -O qcow2 (overlay alone)",
    "merge_output": "cowbd merge --output",
    "qemu_convert_flat": "qemu-img convert -O raw",
    "merge_into": "cowbd merge --into",
    "qemu_commit": "qemu-img commit",
}


def diff_record(path):
    env = read_env(path)
    steps = {}
    for name in {step for _, *pair in DIFF_ROWS for step in pair}:
        if f"{name}_wall_seconds" not in env:
            continue
        steps[name] = {
            "command": env[f"{name}_command"],
            "wall_seconds": float(env[f"{name}_wall_seconds"]),
            "cpu_seconds": float(env[f"{name}_cpu_seconds"]),
            "output_bytes": int(env[f"{name}_output_allocated_bytes"])
            if f"{name}_output_allocated_bytes" in env else None,
        }
    return {"disk_bytes": int(env["disk_bytes"]), "change_count": int(env["change_count"]),
            "change_bytes": int(env["change_bytes"]), "cold_cache": env.get("cold_cache"),
            "base_data_bytes": int(env["base_data_bytes"]),
            "outputs_identical": env.get("outputs_identical") == "yes", "steps": steps}


def diff_table(section):
    steps = section["steps"]
    lines = ["| task | cowbd | s | CPU s | output MiB | qemu-img | s | CPU s | output MiB "
             "| qemu-img s ÷ cowbd s |", "|" + "---|" * 10]
    for task, mine, theirs in DIFF_ROWS:
        if mine not in steps or theirs not in steps:
            continue
        cells = [task]
        for name in (mine, theirs):
            step = steps[name]
            output = step["output_bytes"]
            cells += [f"`{DIFF_STEP_LABELS[name]}`", format_number(step["wall_seconds"], 2),
                      format_number(step["cpu_seconds"], 2),
                      format_number(output / MIB if output is not None else None, 1)]
        cells.append(ratio_text(steps[theirs]["wall_seconds"], steps[mine]["wall_seconds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def diff_markdown(section):
    return ["## Merge and diff against qemu-img", "",
            f"- {section['change_count']} scattered 64 KiB writes "
            f"({section['change_bytes'] / MIB:.0f} MiB) on a {section['disk_bytes'] / GIB:g} GiB "
            f"sparse base ({section['base_data_bytes'] / MIB:.0f} MiB of it data), sent through "
            "cowbd serve and through qemu-nbd over a qcow2 overlay; each step once, from a "
            f"{'cold' if section['cold_cache'] == 'yes' else 'warm'} page cache. Output MiB: "
            "allocated on disk. qemu-img's diff is the overlay's own clusters converted to a new "
            "qcow2 without its backing file. Outputs compared with cmp: "
            f"{'identical' if section['outputs_identical'] else 'NOT CHECKED'}.", "",
            *diff_table(section), ""]


# --- scale ----------------------------------------------------------------------------------

def scale_record(path, mixed_prefix):
    env = read_env(path)
    steps = []
    for step in range(1, int(env.get("grow_step_count", 0)) + 1):
        steps.append({key: int(env[f"grow{step}.{key}"]) for key in (
            "write_count", "rss_kib", "peak_rss_kib", "chunks_written", "store_allocated_bytes")})
    record = {key: float(value) for key, value in env.items()
              if key.endswith("_seconds") and "." not in key}
    record.update({key: int(env[key]) for key in (
        "disk_bytes", "store_bytes", "store_allocated_bytes", "startup_rss_kib",
        "restart_rss_kib", "mixed_peak_rss_kib", "mixed_rss_kib", "mixed_chunks_written")
        if key in env})
    record["growth"] = steps
    record["mixed"] = report_jobs.job_record(mixed_prefix, COWBD) \
        if Path(f"{mixed_prefix}.fio.json").exists() else None
    return record


def scale_table(record):
    def seconds(key):
        return format_number(record.get(key), 3)

    def mib(kib_key):
        return format_number(record[kib_key] / 1024, 1) if kib_key in record else "n/a"

    def verdict(ok):
        return "met" if ok else "not met"

    disk = size_text(record["disk_bytes"])
    lines = ["| measure | value | goal |", "|---|---|---|",
             f"| `create` over a {disk} sparse base | {seconds('create_seconds')} s | |",
             f"| store file: apparent size / allocated | "
             f"{format_number(record['store_bytes'] / GIB, 1)} GiB / "
             f"{format_number(record['store_allocated_bytes'] / MIB, 2)} MiB | |",
             f"| `info` | {seconds('info_seconds')} s | |",
             f"| `info --json` | {seconds('info_json_seconds')} s | |",
             f"| serve start-up (exec to a completed nbdinfo handshake) | "
             f"{seconds('startup_seconds')} s | < 1 s: "
             f"{verdict(record.get('startup_seconds', 99) < 1)} |",
             f"| RSS just after start-up | {mib('startup_rss_kib')} MiB | |"]
    mixed = record.get("mixed")
    if mixed:
        peak = record["mixed_peak_rss_kib"] / 1024
        lines += [f"| 4 connections, random 4 KiB read+write over the whole disk: IOPS | "
                  f"{format_number(mixed['read']['iops'] + mixed['write']['iops'])} | |",
                  f"| ... server CPU s/GiB | "
                  f"{format_number(mixed['server_cpu_seconds_per_gib'], 2)} | |",
                  f"| ... peak RSS (VmHWM) | {peak:.1f} MiB | ≤ 64 MiB: {verdict(peak <= 64)} |",
                  f"| ... chunks written | {record['mixed_chunks_written']:,} | |"]
    for step in record["growth"]:
        lines.append(f"| RSS after {step['write_count']:,} more scattered writes: "
                     f"{step['chunks_written']:,} chunks written in all (`info`), store "
                     f"{step['store_allocated_bytes'] / MIB:,.0f} MiB allocated | "
                     f"{step['rss_kib'] / 1024:.1f} MiB (peak {step['peak_rss_kib'] / 1024:.1f})"
                     " | |")
    lines += [f"| serve start-up again, with those chunks | {seconds('restart_seconds')} s | "
              f"< 1 s: {verdict(record.get('restart_seconds', 99) < 1)} |",
              f"| RSS just after that start-up | {mib('restart_rss_kib')} MiB | |",
              f"| `info --json` with those chunks | {seconds('info_after_seconds')} s | |"]
    return lines


def size_text(byte_count):
    """1099511627776 -> "1 TiB"; 8589934592 -> "8 GiB"."""
    if byte_count >= 1024 * GIB:
        return f"{byte_count / (1024 * GIB):g} TiB"
    return f"{byte_count / GIB:g} GiB"


def scale_markdown(record):
    return [f"## Scale: a {size_text(record['disk_bytes'])} sparse base", "",
            "- cowbd alone, default 4 KiB chunks. RSS is VmRSS from /proc (peak: VmHWM). The "
            "growth rows add 4 KiB writes, each to a new block at a seeded random offset "
            "anywhere on the disk (bench/lib/scatter_writes.py, libnbd, one connection, QD32), "
            "to the chunks the mixed fio job wrote.", "",
            *scale_table(record), ""]
