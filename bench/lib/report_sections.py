"""The sections of a bench run beyond the core one: their part of results.json, results.md and
chart.png, built by report.py. The fio sections (compressed, multiconn) are here, the workflow
ones (kernel, diff, scale) in report_workflows.py. `--kernel-line ENV TARGET`, `--diff-table
ENV` and `--scale-table ENV` print one section's progress instead."""

import sys
from pathlib import Path

import report_jobs
from report_jobs import COWBD, GIB, MIB, format_number, ratio_text, read_env
from report_workflows import (diff_markdown, diff_record, diff_table, kernel_line,
                              kernel_markdown, kernel_record, scale_markdown, scale_record,
                              scale_table)

LZ4_TARGETS = ("cowbd-lz4-fast", "cowbd-lz4-high")
COMPRESSED_PEERS = ("qemu-nbd-zlib", "qemu-nbd-zstd", "nbdkit-xz")


def build(run_dir, meta, sections):
    """Everything measured by the non-core sections that ran, under "section_results"."""
    raw = run_dir / "raw"
    built = {}
    if "compressed" in sections:
        targets, jobs = report_jobs.build_fio_jobs(run_dir, meta, "compressed")
        images = {}
        for target in targets:
            env = read_env(raw / f"compressed.image.{target}.env")
            images[target] = {
                "image_bytes": int(env["image_bytes"]),
                "image_allocated_bytes": int(env["image_allocated_bytes"]),
                "compress_wall_seconds": float(env["compress_wall_seconds"])
                if "compress_wall_seconds" in env else None,
                "compress_cpu_seconds": float(env["compress_cpu_seconds"])
                if "compress_cpu_seconds" in env else None,
                "compress_command": env.get("compress_command"),
                "compressed_at": env.get("compressed_at"),
            }
        built["compressed"] = {"targets": targets, "jobs": jobs, "images": images}
    if "multiconn" in sections:
        targets, jobs = report_jobs.build_fio_jobs(run_dir, meta, "multiconn")
        built["multiconn"] = {"targets": targets, "jobs": jobs}
    if "remote" in sections:
        targets, jobs = report_jobs.build_fio_jobs(run_dir, meta, "remote")
        built["remote"] = {"targets": targets, "jobs": jobs}
    if "depth" in sections:
        targets, jobs = report_jobs.build_fio_jobs(run_dir, meta, "depth")
        built["depth"] = {"targets": targets, "jobs": jobs,
                          "levels": [int(level) for level in meta["depth.levels"].split()]}
    if "kernel" in sections:
        skipped = raw / "kernel.skipped.env"
        if skipped.exists():
            built["kernel"] = {"skipped": read_env(skipped)["skipped"], "results": {}}
        else:
            built["kernel"] = {"results": {
                target: kernel_record(raw / f"kernel.{target}.env")
                for target in meta["kernel.targets"].split()}}
    if "diff" in sections:
        built["diff"] = diff_record(raw / "diff.env")
    if "scale" in sections:
        built["scale"] = scale_record(raw / "scale.env", raw / "scale.mixed")
    return {"section_results": built}


# --- compressed -----------------------------------------------------------------------------

def job_named(jobs, name):
    return next((job for job in jobs if job["name"] == name), None)


def compressed_markdown(section, meta):
    images, jobs = section["images"], section["jobs"]
    raw_bytes = int(meta["disk_byte_count"])
    lines = ["## Compressed bases", "",
             f"- The same {raw_bytes / GIB:g} GiB base, compressed by each tool once (cached in "
             "bench/.cache with its compress time, measured when it was made), served over a "
             "fresh overlay (cowbd: `create --base IMAGE`, default 64 MiB block cache; qemu-nbd: "
             "a qcow2 overlay `-b IMAGE -F qcow2`; nbdkit: `--filter=cow --filter=xz`). cowbd "
             "over the raw base is the reference row.", "",
             "| target | image MiB | disk ÷ image | compress s | compress CPU s | command |",
             "|---|---|---|---|---|---|"]
    for target, image in images.items():
        lines.append(f"| {target} | {format_number(image['image_allocated_bytes'] / MIB, 1)} | "
                     f"{raw_bytes / image['image_allocated_bytes']:.2f} | "
                     f"{format_number(image['compress_wall_seconds'], 1)} | "
                     f"{format_number(image['compress_cpu_seconds'], 1)} | "
                     f"`{short_command(image['compress_command']) or 'raw base'}` |")
    peers = [peer for peer in COMPRESSED_PEERS if peer in images]
    lz4 = [target for target in LZ4_TARGETS if target in images]
    lines += ["", "### cowbd-lz4 ÷ peer", "",
              "Reads: cowbd's headline ÷ the peer's (above 1.00: cowbd faster). Compress time: "
              "the peer's ÷ cowbd's (above 1.00: cowbd faster). Image: cowbd's size ÷ the "
              "peer's (below 1.00: cowbd smaller).", ""]
    columns = [(mine, peer) for mine in lz4 for peer in peers]
    lines += ["| measure | " + " | ".join(f"{mine[6:]} ÷ {peer}" for mine, peer in columns)
              + " |", "|" + "---|" * (len(columns) + 1)]
    for name in ("seq-read", "rand-read"):
        job = job_named(jobs, name)
        if job:
            lines.append(f"| {name} {job['metric']} | " + " | ".join(
                ratio_text(report_jobs.primary(job["results"][mine], job),
                           report_jobs.primary(job["results"][peer], job))
                for mine, peer in columns) + " |")
    lines.append("| compress time | " + " | ".join(
        ratio_text(images[peer]["compress_wall_seconds"], images[mine]["compress_wall_seconds"])
        for mine, peer in columns) + " |")
    lines.append("| image size | " + " | ".join(
        ratio_text(images[mine]["image_allocated_bytes"], images[peer]["image_allocated_bytes"])
        for mine, peer in columns) + " |")
    lines += ["", *compressed_goals(section), ""]
    for job in jobs:
        lines += [f"### compressed {job['name']}: {job['description']}", "",
                  f"fio: `{job['fio_arguments']}`", "",
                  *report_jobs.job_table(job, reference="cowbd-lz4-high"), ""]
    return lines


def short_command(command):
    """A command with each path cut to its file name, ".partial" dropped."""
    if not command:
        return None
    words = [Path(word).name.removesuffix(".partial") if "/" in word else word
             for word in command.split()]
    if "cowbd" in words[0]:
        words[0] = "cowbd"  # whichever binary was measured (--cowbd)
    return " ".join(words)


def compressed_goals(section):
    """The issue's targets, each with the measured ratio and whether it is met."""
    images, jobs = section["images"], section["jobs"]
    goals = []

    def goal(text, value, met):
        goals.append(f"- {text}: {'n/a' if value is None else f'{value:.2f}'} "
                     f"({'met' if met else 'not met'})")

    for name, minimum in (("rand-read", 3.0), ("seq-read", 2.0)):
        job = job_named(jobs, name)
        for mine in LZ4_TARGETS:
            if job and mine in job["results"] and "qemu-nbd-zstd" in job["results"]:
                value = report_jobs.primary(job["results"][mine], job) \
                    / report_jobs.primary(job["results"]["qemu-nbd-zstd"], job)
                goal(f"{name}, {mine} ÷ qemu-nbd-zstd ≥ {minimum:g}", value, value >= minimum)

    def seconds(target):
        return (images.get(target) or {}).get("compress_wall_seconds")

    def cpu_seconds(target):
        return (images.get(target) or {}).get("compress_cpu_seconds")

    for mine, peer in (("cowbd-lz4-fast", "qemu-nbd-zstd"), ("cowbd-lz4-high", "qemu-nbd-zlib")):
        if seconds(mine) and seconds(peer):
            value = seconds(peer) / seconds(mine)
            goal(f"compress time, {peer} ÷ {mine} > 1", value, value > 1)
        # User + sys: what a busy machine changes least.
        if cpu_seconds(mine) and cpu_seconds(peer):
            value = cpu_seconds(peer) / cpu_seconds(mine)
            goal(f"compress CPU, {peer} ÷ {mine} > 1", value, value > 1)
    if "cowbd-lz4-high" in images and "qemu-nbd-zstd" in images:
        value = images["cowbd-lz4-high"]["image_allocated_bytes"] \
            / images["qemu-nbd-zstd"]["image_allocated_bytes"]
        goal("image size, cowbd-lz4-high ÷ qemu-nbd-zstd ≤ 1.10", value, value <= 1.10)
    return ["Goals:", "", *goals] if goals else []


# --- multiconn ------------------------------------------------------------------------------

def connection_count(job_name):
    return int(job_name.rsplit("-", 1)[1].removesuffix("conn"))


def multiconn_markdown(section):
    jobs, targets = section["jobs"], section["targets"]
    lines = ["## Several connections", "",
             "- fio's nbd engine opens one NBD connection per fio job: N connections are "
             "`--numjobs=N --group_reporting`, each job on its own 1/N of the disk, QD32 each. "
             "Reads of the untouched base; each write job on fresh overlays.", "",
             "| target | " + " | ".join(f"{job['name']} {job['metric']}" for job in jobs)
             + " | read scaling | write scaling |", "|" + "---|" * (len(jobs) + 3)]
    for target in targets:
        cells = [format_number(report_jobs.primary(job["results"][target], job)) for job in jobs]
        lines.append(f"| {target} | " + " | ".join(cells) + " | "
                     + scaling_text(jobs, target, "rand-read") + " | "
                     + scaling_text(jobs, target, "rand-write") + " |")
    peers = [target for target in targets if target != COWBD]
    if COWBD in targets and peers:
        lines += ["", "cowbd ÷ peer (above 1.00 means cowbd is faster):", "",
                  "| job | " + " | ".join(peers) + " |", "|" + "---|" * (len(peers) + 1)]
        for job in jobs:
            lines.append(f"| {job['name']} | " + " | ".join(
                ratio_text(report_jobs.primary(job["results"][COWBD], job),
                           report_jobs.primary(job["results"][peer], job)) for peer in peers) + " |")
    lines.append("")
    for job in jobs:
        lines += [f"### multiconn {job['name']}: {job['description']}", "",
                  f"fio: `{job['fio_arguments']}`", "", *report_jobs.job_table(job), ""]
    return lines


def scaling_text(jobs, target, kind):
    """The most connections' headline ÷ one connection's, e.g. "4 conn: 1.62x"."""
    matching = sorted((job for job in jobs if job["name"].startswith(kind + "-")),
                      key=lambda job: connection_count(job["name"]))
    if len(matching) < 2 or connection_count(matching[0]["name"]) != 1:
        return "n/a"
    first, last = matching[0], matching[-1]
    return (f"{connection_count(last['name'])} conn: " + ratio_text(
        report_jobs.primary(last["results"][target], last),
        report_jobs.primary(first["results"][target], first)) + "x")


# --- remote ---------------------------------------------------------------------------------

REMOTE_COWBD = "cowbd-remote"


def remote_markdown(section, meta):
    jobs, targets = section["jobs"], section["targets"]
    lines = ["## Remote base: the base on an NBD server", "",
             f"- One base server for every target, in the same run: "
             f"{meta.get('remote.base_server', 'nbdkit')}, over the page-cached base. cowbd: "
             "`create --base nbd+unix://...`; nbdkit-cow-remote: `nbdkit --filter=cow nbd`; "
             "qemu-nbd-remote: a qcow2 overlay whose backing file is the `nbd+unix://` URI.",
             "- Cold: a fresh overlay and server before the job; warm: the same job (same seed) "
             "right after it. One fio connection, unix sockets.",
             "- The machine is shared with other builds: ratios, not absolute numbers, are what "
             "compare, and even they move from run to run.", "",
             "| target | " + " | ".join(f"{job['name']} {job['metric']}" for job in jobs) + " |",
             "|" + "---|" * (len(jobs) + 1)]
    for target in targets:
        cells = [format_number(report_jobs.primary(job["results"][target], job)) for job in jobs]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    peers = [target for target in targets if target != REMOTE_COWBD]
    if REMOTE_COWBD in targets and peers:
        lines += ["", "cowbd ÷ peer (above 1.00 means cowbd is faster):", "",
                  "| job | " + " | ".join(peers) + " | better peer |",
                  "|" + "---|" * (len(peers) + 2)]
        for job in jobs:
            mine = report_jobs.primary(job["results"][REMOTE_COWBD], job)
            values = [report_jobs.primary(job["results"][peer], job) for peer in peers]
            best = max((value for value in values if value), default=None)
            lines.append(f"| {job['name']} | " + " | ".join(
                ratio_text(mine, value) for value in values) + f" | {ratio_text(mine, best)} |")
    lines.append("")
    for job in jobs:
        lines += [f"### remote {job['name']}: {job['description']}", "",
                  f"fio: `{job['fio_arguments']}`", "",
                  *report_jobs.job_table(job, reference=REMOTE_COWBD), ""]
    return lines


# --- depth ----------------------------------------------------------------------------------

def depth_markdown(section, meta):
    jobs, levels = section["jobs"], section["levels"]
    lines = ["## Depth: reads through chains of overlays", "",
             "- cowbd-dN: N stores, each `create --base` over the one below, the bottom one over "
             "the raw base; qemu-nbd-dN: N qcow2 overlays, each `qemu-img create -b` over the one "
             "below. Each layer got the same scattered 4 KiB writes in both chains (half the "
             "disk's blocks in all, shared out between the layers).",
             "- ÷ d1: the figure at this depth over the same server's at depth 1 (1.00: no "
             "slower with depth). cowbd ÷ qemu: above 1.00 means cowbd is faster.",
             f"- Load average at start {meta['load_average_start']}: on a busy machine the "
             "ratios move from run to run.", "",
             "| depth | " + " | ".join(
                 f"cowbd {job['name']} {job['metric']} | ÷ d1 | qemu-nbd | ÷ d1 | cowbd ÷ qemu"
                 for job in jobs) + " |",
             "|" + "---|" * (1 + 5 * len(jobs))]
    for level in levels:
        cells = []
        for job in jobs:
            results = job["results"]
            mine = report_jobs.primary(results[f"cowbd-d{level}"], job)
            peer = report_jobs.primary(results[f"qemu-nbd-d{level}"], job)
            mine_first = report_jobs.primary(results[f"cowbd-d{levels[0]}"], job)
            peer_first = report_jobs.primary(results[f"qemu-nbd-d{levels[0]}"], job)
            cells += [format_number(mine), ratio_text(mine, mine_first), format_number(peer),
                      ratio_text(peer, peer_first), ratio_text(mine, peer)]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines.append("")
    for job in jobs:
        lines += [f"### depth {job['name']}: {job['description']}", "",
                  f"fio: `{job['fio_arguments']}`", "",
                  *report_jobs.job_table(job, reference=f"cowbd-d{levels[0]}"), ""]
    return lines


# --- the whole report -----------------------------------------------------------------------

def markdown(results):
    built, meta = results.get("section_results", {}), results["meta"]
    lines = []
    if "compressed" in built:
        lines += ["", *compressed_markdown(built["compressed"], meta)]
    if "multiconn" in built:
        lines += ["", *multiconn_markdown(built["multiconn"])]
    if "remote" in built:
        lines += ["", *remote_markdown(built["remote"], meta)]
    if "depth" in built:
        lines += ["", *depth_markdown(built["depth"], meta)]
    if "kernel" in built:
        lines += ["", *kernel_markdown(built["kernel"], meta)]
    if "diff" in built:
        lines += ["", *diff_markdown(built["diff"])]
    if "scale" in built:
        lines += ["", *scale_markdown(built["scale"])]
    return lines


def panels(results):
    """Chart panels, (title, labels, values, format) each, for the sections that ran."""
    built = results.get("section_results", {})
    found = []
    if "compressed" in built:
        section = built["compressed"]
        for job in section["jobs"]:
            targets = list(job["results"])
            found.append((f"compressed {job['name']}: {job['metric']} (higher is better)",
                          targets, [report_jobs.primary(job["results"][t], job) for t in targets],
                          "{:,.0f}"))
        images = {target: image for target, image in section["images"].items()
                  if image["compress_wall_seconds"] is not None}
        found.append(("compressed: image MiB (lower is better)", list(images),
                      [image["image_allocated_bytes"] / MIB for image in images.values()],
                      "{:,.0f}"))
        found.append(("compressed: compress seconds (lower is better)", list(images),
                      [image["compress_wall_seconds"] for image in images.values()], "{:.1f}"))
    if "multiconn" in built:
        for kind in ("rand-read", "rand-write"):
            jobs = [job for job in built["multiconn"]["jobs"] if job["name"].startswith(kind)]
            labels, values = [], []
            for target in built["multiconn"]["targets"]:
                for job in jobs:
                    labels.append(f"{target} ×{connection_count(job['name'])}")
                    values.append(report_jobs.primary(job["results"][target], job))
            found.append((f"{kind} by connections: IOPS (higher is better)", labels, values,
                          "{:,.0f}"))
    if "remote" in built:
        for job in built["remote"]["jobs"]:
            targets = list(job["results"])
            found.append((f"remote {job['name']}: {job['metric']} (higher is better)", targets,
                          [report_jobs.primary(job["results"][t], job) for t in targets],
                          "{:,.0f}"))
    if "depth" in built:
        for job in built["depth"]["jobs"]:
            targets = list(job["results"])
            found.append((f"depth {job['name']}: {job['metric']} (higher is better)", targets,
                          [report_jobs.primary(job["results"][t], job) for t in targets],
                          "{:,.0f}"))
    kernel = built.get("kernel", {}).get("results")
    if kernel:
        found.append(("kernel: mkfs + untar + sync, seconds (lower is better)", list(kernel),
                      [record["total"] for record in kernel.values()], "{:.1f}"))
    return found


def main():
    if sys.argv[1] == "--kernel-line":
        kernel_line(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--diff-table":
        print("\n".join(diff_table(diff_record(Path(sys.argv[2])))))
    elif sys.argv[1] == "--scale-table":
        path = Path(sys.argv[2])
        print("\n".join(scale_table(scale_record(path, path.parent / "scale.mixed"))))


if __name__ == "__main__":
    main()
