"""One fio job of a bench run as a record: its fio report and the server's CPU and memory
around it (raw/[SECTION.]<job>.<target>.fio.json and .env), each target's median round, and the
number formats and markdown rows every section's report uses. Imported by report.py,
report_sections.py and report_workflows.py; imports none of them."""

import json
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
COWBD = "cowbd"


def read_env(path):
    """key=value lines; the value is the rest of the line."""
    values = {}
    for line in Path(path).read_text().splitlines():
        key, separator, value = line.partition("=")
        if separator:
            values[key] = value
    return values


def direction_summary(fio_direction):
    """Throughput and p99 completion latency of one direction of a fio job, or None if idle."""
    if fio_direction["total_ios"] == 0:
        return None
    percentiles = fio_direction["clat_ns"].get("percentile", {})
    return {
        "bytes": fio_direction["io_bytes"],
        "operation_count": fio_direction["total_ios"],
        "iops": fio_direction["iops"],
        "mib_per_second": fio_direction["bw_bytes"] / MIB,
        "p99_latency_us": percentiles.get("99.000000", 0) / 1000,
        "mean_latency_us": fio_direction["clat_ns"]["mean"] / 1000,
    }


def elsewhere_cpu_percent(env, fio, server_cpu_seconds):
    """CPU the machine spent on anything but the server and fio during the job (kernel threads
    included: this job's writeback, other users' work), as a share of all its CPUs."""
    wall_seconds = int(env["wall_ns"]) / 1e9
    ticks_per_second = int(env["clock_ticks_per_second"])
    machine_seconds = (int(env["machine_busy_ticks_after"])
                       - int(env["machine_busy_ticks_before"])) / ticks_per_second
    fio_seconds = (fio["usr_cpu"] + fio["sys_cpu"]) / 100 * fio["job_runtime"] / 1000
    elsewhere = max(0.0, machine_seconds - server_cpu_seconds - fio_seconds)
    return 100 * elsewhere / (wall_seconds * int(env["cpu_count"]))


def job_record(prefix, target):
    """Everything measured for one target in one job."""
    fio = json.loads(Path(f"{prefix}.fio.json").read_text())["jobs"][0]
    env = read_env(f"{prefix}.env")
    read, write = direction_summary(fio["read"]), direction_summary(fio["write"])
    moved_byte_count = (read["bytes"] if read else 0) + (write["bytes"] if write else 0)
    ticks_per_second = int(env["clock_ticks_per_second"])
    cpu_seconds = (int(env["server_cpu_ticks_after"]) - int(env["server_cpu_ticks_before"])) \
        / ticks_per_second
    record = {
        "target": target,
        "read": read,
        "write": write,
        "runtime_seconds": fio["job_runtime"] / 1000,
        "moved_bytes": moved_byte_count,
        "server_cpu_seconds": cpu_seconds,
        "server_cpu_seconds_per_gib": cpu_seconds / (moved_byte_count / GIB)
        if moved_byte_count else None,
        "server_peak_rss_mib": int(env["server_peak_rss_kib"]) / 1024,
        "client_cpu_percent": fio["usr_cpu"] + fio["sys_cpu"],
        "elsewhere_cpu_percent": elsewhere_cpu_percent(env, fio, cpu_seconds),
        "overlay": None,
        "with_flush": None,
    }
    if write and "flush_ns" in env:
        # The writes' own time (fio's rate) plus the FLUSH timed after them.
        flush_seconds = int(env["flush_ns"]) / 1e9
        write_seconds = write["bytes"] / (write["mib_per_second"] * MIB)
        record["with_flush"] = {
            "flush_ms": flush_seconds * 1000,
            "mib_per_second": write["bytes"] / MIB / (write_seconds + flush_seconds),
        }
    if write and "overlay_allocated_bytes_after" in env:
        allocated = int(env["overlay_allocated_bytes_after"]) \
            - int(env["overlay_allocated_bytes_before"])
        file_bytes = int(env["overlay_file_bytes_after"]) - int(env["overlay_file_bytes_before"])
        record["overlay"] = {
            "allocated_bytes": allocated,
            "file_allocated_bytes": file_bytes,
            "write_amplification": allocated / write["bytes"],
            "file_write_amplification": file_bytes / write["bytes"],
        }
    return record


def primary(record, job):
    """The job's headline number: MiB/s for sequential jobs, IOPS for random ones. A job with a
    FLUSH timed apart has the rate without it here, and `with_flush` beside it."""
    direction = record["write"] or record["read"]
    if job["metric"] == "MiB/s":
        return direction["mib_per_second"]
    return direction["iops"]


def job_metric(name):
    return "MiB/s" if name.startswith("seq") else "IOPS"


def format_number(value, digits=0):
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio_text(numerator, denominator):
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def no_overlay_reason(target):
    return {"nbdkit-file": "in place", "nbdkit-memory": "RAM"}.get(target, "n/a")


def with_flush_rate(record):
    """MiB/s of the writes and the FLUSH timed after them, or None."""
    return record["with_flush"]["mib_per_second"] if record.get("with_flush") else None


def job_table(job, reference=COWBD):
    """Markdown rows for one job: each target, and the reference's (cowbd's) headline divided by
    the target's; for a job with a FLUSH timed apart, the rate with it too."""
    is_write = any(record["write"] for record in job["results"].values())
    has_flush = any(record.get("with_flush") for record in job["results"].values())
    cowbd = job["results"].get(reference)
    header = ["target", job["metric"], "IOPS" if job["metric"] == "MiB/s" else "MiB/s",
              "p99 µs", "server CPU s/GiB", "peak RSS MiB"]
    if has_flush:
        header += ["FLUSH ms", f"{job['metric']} with FLUSH"]
    if is_write:
        header += ["write ampl.", "overlay file MiB"]
    header += [f"{reference} ÷ target ({job['metric']})"]
    if has_flush:
        header += [f"{reference} ÷ target (with FLUSH)"]
    header += [f"{reference} ÷ target (p99)", "CPU elsewhere %"]
    round_count = len(next(iter(job["results"].values()))["round_headlines"])
    if round_count > 1:
        header.append(f"{job['metric']} of the {round_count} rounds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target, record in job["results"].items():
        direction = record["write"] or record["read"]
        secondary = direction["iops"] if job["metric"] == "MiB/s" else direction["mib_per_second"]
        row = [f"**{target}**" if target == reference else target,
               format_number(primary(record, job), 1 if job["metric"] == "MiB/s" else 0),
               format_number(secondary, 1 if job["metric"] == "IOPS" else 0),
               format_number(direction["p99_latency_us"]),
               format_number(record["server_cpu_seconds_per_gib"], 2),
               format_number(record["server_peak_rss_mib"], 1)]
        if has_flush:
            flushed = record.get("with_flush")
            row += [format_number(flushed["flush_ms"], 1) if flushed else "n/a",
                    format_number(with_flush_rate(record), 1)]
        if is_write:
            overlay = record["overlay"]
            if overlay:
                row += [f"{overlay['write_amplification']:.2f}",
                        format_number(overlay["file_allocated_bytes"] / MIB, 1)]
            else:
                row += [no_overlay_reason(target)] * 2
        if cowbd and target != reference:
            cowbd_direction = cowbd["write"] or cowbd["read"]
            row += [ratio_text(primary(cowbd, job), primary(record, job))]
            if has_flush:
                row += [ratio_text(with_flush_rate(cowbd), with_flush_rate(record))]
            row += [ratio_text(cowbd_direction["p99_latency_us"], direction["p99_latency_us"])]
        else:
            row += ["", "", ""] if has_flush else ["", ""]
        row.append(format_number(record["elsewhere_cpu_percent"]))
        if round_count > 1:
            digits = 1 if job["metric"] == "MiB/s" else 0
            row.append(" / ".join(format_number(value, digits)
                                  for value in record["round_headlines"]))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def median_round(records, job):
    """The round whose headline is the median (the lower middle one for an even count), with
    every round's headline kept beside it."""
    ranked = sorted(records, key=lambda record: primary(record, job))
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["round_headlines"] = [primary(record, job) for record in records]
    return chosen


def build_fio_jobs(run_dir, meta, section):
    """The fio jobs of a section, each target's median round: core's records are
    raw/<job>.<target>.round<N>, other sections' raw/<section>.<job>.<target>.round<N>."""
    key_prefix = "" if section == "core" else f"{section}."
    targets = meta[f"{key_prefix}targets"].split()
    round_count = int(meta.get("round_count", 1))
    jobs = []
    for name in meta[f"{key_prefix}jobs"].split():
        job = {"name": name, "description": meta[f"{key_prefix}job.{name}.description"],
               "fio_arguments": meta[f"{key_prefix}job.{name}.fio"], "metric": job_metric(name),
               "results": {}}
        for target in targets:
            records = [job_record(run_dir / "raw" / f"{key_prefix}{name}.{target}.round{number}",
                                  target)
                       for number in range(1, round_count + 1)]
            job["results"][target] = median_round(records, job)
        jobs.append(job)
    return targets, jobs
