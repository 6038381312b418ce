"""Turns a bench run folder (meta.env, raw/[SECTION.]<job>.<target>.fio.json and .env) into
results.json, results.md (a table per job, ratios cowbd / peer) and chart.png: the core section
here, the others in report_sections.py, the job records in report_jobs.py. `--line PREFIX
TARGET` prints one progress line for a single job instead. Run with Debian's python3
(matplotlib)."""

import json
import sys
from pathlib import Path

import report_sections
from report_jobs import (COWBD, GIB, build_fio_jobs, job_record, job_table, primary, ratio_text,
                         read_env, with_flush_rate)


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
        if cowbd.get("with_flush"):
            ratios = [ratio_text(with_flush_rate(cowbd), with_flush_rate(job["results"][peer]))
                      for peer in peers]
            lines.append(f"| {job['name']} with its FLUSH | {job['metric']} | "
                         + " | ".join(ratios) + " |")
    return lines


def markdown(results):
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
    if {"core", "compressed", "multiconn", "remote", "depth"} & set(results["sections"]):
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
              "temporary file and nbdkit-memory is RAM, so their FLUSH costs nothing. seq-write's "
              "FLUSH is timed apart, on a connection of its own right after fio: its headline is "
              "the writes alone, \"with FLUSH\" the same bytes over the writes' time plus the "
              "FLUSH's; server CPU includes the FLUSH."]
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


def build_results(run_dir):
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
    if record["with_flush"]:
        text += (f"  FLUSH {record['with_flush']['flush_ms']:.0f} ms: "
                 f"{record['with_flush']['mib_per_second']:.1f} MiB/s with it")
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
