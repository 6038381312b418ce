"""Turns a bench run folder (meta.env, raw/[SECTION.]<job>.<target>.fio.json and .env) into
results.json, results.md (a table per job, ratios cowbd / peer) and chart.png: the core section
here, the others in report_sections.py. `--line PREFIX TARGET` prints one progress line for a
single job instead. Run with Debian's python3 (matplotlib)."""

import json
import sys
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
    """The job's headline number: MiB/s for sequential jobs, IOPS for random ones."""
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


def job_table(job, reference=COWBD):
    """Markdown rows for one job: each target, and the reference's (cowbd's) headline divided by
    the target's."""
    is_write = any(record["write"] for record in job["results"].values())
    cowbd = job["results"].get(reference)
    header = ["target", job["metric"], "IOPS" if job["metric"] == "MiB/s" else "MiB/s",
              "p99 µs", "server CPU s/GiB", "peak RSS MiB"]
    if is_write:
        header += ["write ampl.", "overlay file MiB"]
    header += [f"{reference} ÷ target ({job['metric']})", f"{reference} ÷ target (p99)",
               "CPU elsewhere %"]
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
        if is_write:
            overlay = record["overlay"]
            if overlay:
                row += [f"{overlay['write_amplification']:.2f}",
                        format_number(overlay["file_allocated_bytes"] / MIB, 1)]
            else:
                row += [no_overlay_reason(target)] * 2
        if cowbd and target != reference:
            cowbd_direction = cowbd["write"] or cowbd["read"]
            row += [ratio_text(primary(cowbd, job), primary(record, job)),
                    ratio_text(cowbd_direction["p99_latency_us"], direction["p99_latency_us"])]
        else:
            row += ["", ""]
        row.append(format_number(record["elsewhere_cpu_percent"]))
        if round_count > 1:
            digits = 1 if job["metric"] == "MiB/s" else 0
            row.append(" / ".join(format_number(value, digits)
                                  for value in record["round_headlines"]))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_table(results):
    """One row per job: cowbd's headline divided by each peer's."""
    peers = [target for target in results["targets"] if target != COWBD]
    if COWBD not in results["targets"] or not peers:
        return []
    lines = ["| job | metric | " + " | ".join(peers) + " |", "|" + "---|" * (len(peers) + 2)]
    for job in results["jobs"]:
        cowbd = job["results"][COWBD]
        ratios = [ratio_text(primary(cowbd, job), primary(job["results"][peer], job))
                  for peer in peers]
        lines.append(f"| {job['name']} | {job['metric']} | " + " | ".join(ratios) + " |")
    return lines


def markdown(results):
    import report_sections

    meta = results["meta"]
    durations = ", ".join(f"{name} {int(meta.get(f'section.{name}.seconds', 0)) / 60:.1f} min"
                          for name in results["sections"])
    lines = [
        f"# cowbd benchmark, {meta['started']}",
        "",
        f"- Sections: {durations}.",
        f"- cowbd {meta['cowbd_commit']} (Sources changed since: {meta['cowbd_work_tree_dirty']}),"
        f" serve --threads {meta['cowbd_threads']}; {meta['fio_version']}, "
        f"{meta['nbdkit_version']}, {meta['qemu_nbd_version']}.",
        f"- Machine: {meta['cpu_count']} × {meta['cpu_model']}, Linux {meta['kernel']}. "
        f"Load average at start {meta['load_average_start']}, at end "
        f"{meta.get('load_average_end', '?')}. Before: {meta['machine_activity_start']}. After: "
        f"{meta.get('machine_activity_end', '?')}.",
        "",
    ]
    if "core" in results["sections"]:
        lines += core_markdown(results)
    lines += report_sections.markdown(results)
    lines += ["", "Columns: see bench/README.md."]
    if {"core", "compressed", "multiconn"} & set(results["sections"]):
        lines[-1] += " Ratios of p99 latency below 1.00 mean cowbd answers faster."
    return "\n".join(lines + [""])


def core_markdown(results):
    meta = results["meta"]
    lines = [
        "## Core: one connection, raw base",
        "",
        f"- {results['round_count']} round(s) of every job on fresh overlays; each row is the "
        "target's median round (by the headline metric).",
        f"- Disk: {int(meta['disk_byte_count']) / GIB:g} GiB raw base (ext4 ~60% full of system "
        f"files, last 1/8 random), page cache warm; {meta['runtime_seconds']} s per timed job; "
        "fio nbd engine, one connection, unix socket. Jobs run in the order below, each target "
        "in turn; every overlay is fresh at the start of each round and again before seq-write.",
        "",
        "### cowbd ÷ peer (headline metric; above 1.00 means cowbd is faster)",
        "",
        *summary_table(results),
    ]
    for job in results["jobs"]:
        lines += ["", f"### {job['name']}: {job['description']}", "",
                  f"fio: `{job['fio_arguments']}`", "", *job_table(job)]
    lines += ["", "FLUSH: cowbd (fsync, then the bitmap, then fdatasync), nbdkit-file (fdatasync) "
              "and qemu-nbd (fdatasync) make the writes durable; nbdkit-cow's overlay is a "
              "temporary file and nbdkit-memory is RAM, so their FLUSH costs nothing."]
    return lines


CEILINGS = ("nbdkit-file", "nbdkit-memory")


def bar_color(label):
    """cowbd stands out; the ceilings (no copy-on-write) are paler than the COW peers. A label
    is a target, maybe with a suffix ("cowbd ×2", "cowbd-lz4-high")."""
    target = label.split(" ")[0]
    if target == COWBD or target.startswith(COWBD + "-"):
        return "#d9480f"
    return "#ced4da" if target in CEILINGS else "#868e96"


def horizontal_bars(axis, labels, values, title, value_format, colors=None):
    positions = list(range(len(labels)))
    axis.barh(positions, values, color=colors or [bar_color(label) for label in labels])
    axis.set_yticks(positions, labels)
    axis.invert_yaxis()
    axis.set_title(title, fontsize=10)
    axis.tick_params(labelsize=8)
    for position, value in zip(positions, values):
        axis.text(value, position, " " + value_format.format(value), va="center", fontsize=8)
    axis.set_xlim(0, max(values) * 1.3 if values and max(values) > 0 else 1)


def core_panels(results):
    """(title, labels, values, format) per core job, and rand-write's write amplification."""
    panels = []
    for job in results["jobs"]:
        targets = list(job["results"])
        panels.append((f"{job['name']}: {job['metric']} (higher is better)", targets,
                       [primary(job["results"][target], job) for target in targets], "{:,.0f}"))
    for job in results["jobs"]:
        if job["name"] == "rand-write":
            amplification = {target: record["overlay"]["write_amplification"]
                             for target, record in job["results"].items() if record["overlay"]}
            if amplification:
                panels.append(("rand-write: write amplification (lower is better)",
                               list(amplification), list(amplification.values()), "{:.2f}"))
    return panels


def chart(results, path):
    """One panel per core job, rand-write's write amplification, then the other sections'."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import report_sections

    panels = (core_panels(results) if "core" in results["sections"] else []) \
        + report_sections.panels(results)
    if not panels:
        return
    column_count = 3
    row_count = (len(panels) + column_count - 1) // column_count
    figure, axes = plt.subplots(row_count, column_count, figsize=(13, 3.4 * row_count),
                                squeeze=False)
    for axis, (title, labels, values, value_format) in zip(axes.flat, panels):
        horizontal_bars(axis, labels, values, title, value_format)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(f"cowbd (orange) vs COW peers (grey) and no-COW ceilings (pale), "
                    f"{int(results['meta']['disk_byte_count']) / GIB:g} GiB base, "
                    f"{results['meta']['started']}", fontsize=11)
    # Keep half an inch at the top for the title, whatever the number of rows.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.4 * row_count)))
    figure.savefig(path, dpi=100)


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


def build_results(run_dir):
    import report_sections

    meta = read_env(run_dir / "meta.env")
    sections = meta.get("sections", "core").split()
    round_count = int(meta.get("round_count", 1))
    results = {"meta": meta, "sections": sections, "targets": [], "round_count": round_count,
               "jobs": []}
    if "core" in sections:
        results["targets"], results["jobs"] = build_fio_jobs(run_dir, meta, "core")
    results.update(report_sections.build(run_dir, meta, sections))
    return results


def progress_line(prefix, target):
    record = job_record(prefix, target)
    direction = record["write"] or record["read"]
    text = (f"   {target:14} {direction['mib_per_second']:9.1f} MiB/s {direction['iops']:9.0f} "
            f"IOPS  p99 {direction['p99_latency_us']:8.0f} µs  "
            f"CPU {record['server_cpu_seconds']:5.2f} s  "
            f"RSS {record['server_peak_rss_mib']:6.1f} MiB  "
            f"elsewhere {record['elsewhere_cpu_percent']:3.0f}%")
    if record["overlay"]:
        text += f"  WA {record['overlay']['write_amplification']:.2f}"
    print(text)


def main():
    if sys.argv[1] == "--line":
        progress_line(sys.argv[2], sys.argv[3])
        return
    run_dir = Path(sys.argv[1])
    results = build_results(run_dir)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "results.md").write_text(markdown(results))
    chart(results, run_dir / "chart.png")


if __name__ == "__main__":
    main()
