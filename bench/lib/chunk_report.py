"""Turns a bench/chunk-size run folder into results.json and results.md: per chunk size, the
scattered-write and random-read IOPS, write amplification and bitmap size."""

import json
import sys
from pathlib import Path

from report import GIB, MIB, job_record, read_env

TIB = 1024 * GIB
BITMAP_PAGE_BYTE_COUNT = 4096


def bitmap_byte_count(chunk_count):
    """docs/FORMAT.md: bitmap_size = roundUp(ceil(chunks / 8), 4096)."""
    byte_count = (chunk_count + 7) // 8
    return (byte_count + BITMAP_PAGE_BYTE_COUNT - 1) // BITMAP_PAGE_BYTE_COUNT \
        * BITMAP_PAGE_BYTE_COUNT


def size_text(byte_count):
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if byte_count >= scale:
            value = byte_count / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{byte_count} B"


def chunk_record(run_dir, chunk_size):
    prefix = run_dir / "raw" / chunk_size
    write = job_record(f"{prefix}.write", "cowbd")
    read = job_record(f"{prefix}.read", "cowbd")
    info = json.loads(Path(f"{prefix}.info.json").read_text())
    written_byte_count = write["write"]["bytes"]
    return {
        "chunk_size": info["chunk_size"],
        "chunks_total": info["chunks_total"],
        "chunks_written": info["chunks_written"],
        "allocated_bytes": info["allocated_bytes"],
        "file_allocated_bytes": int(Path(f"{prefix}.file-bytes").read_text()),
        "written_bytes": written_byte_count,
        "write_amplification": info["allocated_bytes"] / written_byte_count,
        "bitmap_bytes": bitmap_byte_count(info["chunks_total"]),
        "bitmap_bytes_per_tib": bitmap_byte_count(TIB // info["chunk_size"]),
        "write": write,
        "read": read,
    }


def markdown(meta, records):
    lines = [
        f"# cowbd chunk size, {meta['started']}",
        "",
        f"{int(meta['disk_byte_count']) / GIB:g} GiB base, a fresh store per chunk size, cowbd "
        f"{meta['cowbd_commit']}; load average {meta['load_average_start']} at start, "
        f"{meta.get('load_average_end', '?')} at end.",
        f"Writes: fio `{meta['write_fio']}`; then reads: fio `{meta['read_fio']}`.",
        "",
        "| chunk | write IOPS | write p99 µs | chunks written | allocated MiB | write ampl. "
        "| read IOPS | read p99 µs | bitmap | bitmap per TiB | CPU elsewhere % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        write, read = record["write"]["write"], record["read"]["read"]
        elsewhere_percent = max(record["write"]["elsewhere_cpu_percent"],
                                record["read"]["elsewhere_cpu_percent"])
        lines.append(
            f"| {size_text(record['chunk_size'])} | {write['iops']:,.0f} "
            f"| {write['p99_latency_us']:,.0f} | {record['chunks_written']:,} "
            f"| {record['allocated_bytes'] / MIB:,.1f} | {record['write_amplification']:.2f} "
            f"| {read['iops']:,.0f} | {read['p99_latency_us']:,.0f} "
            f"| {size_text(record['bitmap_bytes'])} | {size_text(record['bitmap_bytes_per_tib'])} "
            f"| {elsewhere_percent:.0f} |")
    lines += ["", "Write amplification: bytes the store allocated (`cowbd info` allocated_bytes) "
              "divided by the bytes fio wrote (8192 × 4 KiB = 32 MiB). CPU elsewhere: the "
              "larger of the two jobs' (see bench/README.md).", ""]
    return "\n".join(lines)


def main():
    run_dir = Path(sys.argv[1])
    meta = read_env(run_dir / "meta.env")
    records = [chunk_record(run_dir, chunk_size) for chunk_size in meta["chunk_sizes"].split()]
    (run_dir / "results.json").write_text(
        json.dumps({"meta": meta, "chunk_sizes": records}, indent=2) + "\n")
    (run_dir / "results.md").write_text(markdown(meta, records))


if __name__ == "__main__":
    main()
