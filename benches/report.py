"""Turn the TPC-H benchmark's results JSON into a Markdown report and a latency chart.

Usage: python benches/report.py RESULTS.json OUTDIR

Writes OUTDIR/report.md and OUTDIR/latency.png. RESULTS.json is written by `benches/tpch.rs`; any section may
be missing, null or empty (a skipped part of the run), and is then reported as "not measured".
"""

import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

NOT_MEASURED = "not measured"
ENGINES = [  # (results key, chart label, colour)
    ("parley_ms", "Parley (a)", "#d62728"),
    ("datafusion_ms", "DataFusion (b)", "#1f77b4"),
    ("duckdb_ms", "DuckDB (c)", "#e6a800"),
    ("native_ms", "DataFusion native Parquet (d)", "#7f7f7f"),
]


# ---- numbers -------------------------------------------------------------------------------------------------


def samples_of(entry: dict, key: str) -> list[float]:
    """The numeric samples under `key`; a NaN the driver measured arrives as JSON null and is dropped."""
    return [float(v) for v in entry.get(key) or [] if isinstance(v, (int, float)) and math.isfinite(v)]


def median(samples) -> float | None:
    return float(np.median(samples)) if samples else None


def percentile(samples, p: float) -> float | None:
    # Linear interpolation between closest ranks (numpy's default).
    return float(np.percentile(samples, p)) if samples else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def fmt_num(v, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A Markdown table; `align` has one letter per column, l or r."""
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(r) + " |" for r in [header, rule, *rows]]


# ---- sections ------------------------------------------------------------------------------------------------


def latency_stats(entry: dict) -> dict:
    """Medians (and min/max) of a, b, c for one query, and the ratios a/b and a/c."""
    stats = {}
    for key, _, _ in ENGINES:
        samples = samples_of(entry, key)
        stats[key] = (median(samples), min(samples) if samples else None, max(samples) if samples else None)
    a, b, c = (stats[key][0] for key, _, _ in ENGINES[:3])
    stats["a/b"] = ratio(a, b)
    stats["a/c"] = ratio(a, c)
    return stats


def header_section(results: dict) -> list[str]:
    machine = results.get("machine") or {}

    def known(value, text: str) -> str | None:
        return None if value in (None, "") else text.format(value)

    hardware = [
        known(machine.get("cpu_model"), "{}"),
        known(machine.get("cpus"), "{} CPUs"),
        known(machine.get("memory_gib"), "{:g} GiB memory"),
        known(machine.get("os"), "{}"),
    ]
    versions = [
        known(machine.get("parley_version"), "Parley {}"),
        known(machine.get("datafusion"), "DataFusion {}"),
        known(machine.get("duckdb"), "DuckDB {}"),
        known(machine.get("duckdb_mode"), "DuckDB reads the tables with `{}`"),
    ]
    settings = [
        known(results.get("sf"), "TPC-H scale factor {:g}"),
        known(results.get("runs"), "{} measured runs per query"),
        known(results.get("warmup"), "{} warm-up run(s) first"),
    ]

    def joined(parts: list[str | None]) -> str:
        return ", ".join(p for p in parts if p) or "not recorded"

    return [
        "# Parley TPC-H benchmark",
        "",
        f"- **When**: {results.get('started') or 'not recorded'}",
        f"- **Machine**: {joined(hardware)}",
        f"- **Versions**: {joined(versions)}",
        f"- **Settings**: {joined(settings)}",
    ]


def method_section(results: dict) -> list[str]:
    runs = results.get("runs")
    warmup = results.get("warmup")
    return [
        "## Method",
        "",
        "Each query runs on three engines over the same Iceberg tables (the same snapshot, on the same disk):",
        "",
        "- **(a) Parley**: the `query` tool called through an MCP client over stdio, so the time includes "
        "governance (the policy decision, and any grant's masks and row filter in the plan), the durable audit "
        "record, and serializing the result to JSON;",
        "- **(b) DataFusion**: raw DataFusion with iceberg-datafusion, in-process, on the same tables — the "
        "engine Parley is built on, without Parley around it;",
        (
            "- **(c) DuckDB**: DuckDB reading the current snapshot's Parquet data files directly with `read_parquet` "
            "(its Iceberg extension could not load), in a separate process, fetching the whole result as Arrow."
            if (results.get("machine") or {}).get("duckdb_mode") == "read_parquet"
            else "- **(c) DuckDB**: DuckDB with its Iceberg extension (`iceberg_scan` on the table's current metadata "
            "file), in a separate process, fetching the whole result as Arrow."
        ),
        "- **(d) DataFusion native Parquet** (for diagnosis, not a way to read Iceberg): DataFusion's own "
        "`ListingTable` over exactly the data files of each table's current snapshot, in-process. (b) against (d) "
        "isolates the cost of iceberg-datafusion's scan, which reads a table as one stream, against DataFusion's "
        "file-parallel Parquet scan.",
        "",
        "Runs are interleaved: each round runs every query on all engines, rotating which engine goes "
        "first, so that drift on the machine and warm caches favour none of them. After "
        f"{warmup if warmup is not None else 'the'} warm-up round(s), each cell is the median of "
        f"{runs if runs is not None else 'the measured'} measured runs, with the fastest and slowest run in brackets. "
        "a/b is Parley's cost over its own engine; a/c compares it to a different engine.",
    ]


def latency_section(results: dict) -> list[str]:
    lines = ["## Query latency", ""]
    latency = results.get("latency") or []
    if not latency:
        return lines + [f"Latency: {NOT_MEASURED}."]
    lines.append("![latency](latency.png)")
    lines.append("")
    rows = []
    errors = []
    for entry in latency:
        stats = latency_stats(entry)
        engine_cells = []
        for key, _, _ in ENGINES:
            med, lo, hi = stats[key]
            engine_cells.append("—" if med is None else f"{fmt_ms(med)} [{fmt_ms(lo)}–{fmt_ms(hi)}]")
        rows.append(
            [cell(entry.get("query", "?")), cell(entry.get("kind", "")), fmt_num(entry.get("rows"))]
            + engine_cells
            + [fmt_ratio(stats["a/b"]), fmt_ratio(stats["a/c"])]
        )
        if entry.get("error"):
            errors.append(f"- `{entry.get('query', '?')}`: {' '.join(str(entry['error']).split())}")
    lines += table(
        ["query", "kind", "rows", "a: Parley ms", "b: DataFusion ms", "c: DuckDB ms", "d: native Parquet ms", "a/b",
         "a/c"],
        rows,
        "llrrrrrrr",
    )
    lines.append("")
    lines.append("A dash means not measured: that engine was skipped, or the query failed on it.")
    lines.append("")
    for kind, label in [("tpch", "TPC-H"), ("agent", "agent-style")]:
        entries = [latency_stats(e) for e in latency if e.get("kind") == kind]
        if not entries:
            continue
        parts = []
        for key, peer in [("a/b", "a/b (Parley / DataFusion)"), ("a/c", "a/c (Parley / DuckDB)")]:
            values = [s[key] for s in entries if s[key]]  # a 0 ms median has no meaningful ratio
            g = geomean(values)
            parts.append(f"{peer} = **{fmt_ratio(g)}** over {len(values)} queries" if g else f"{peer}: {NOT_MEASURED}")
        lines.append(f"Geometric mean over the {label} queries: " + "; ".join(parts) + ".")
        lines.append("")
    if errors:
        lines += ["Errors:", "", *errors]
    return lines


def overhead_section(results: dict) -> list[str]:
    lines = ["## Per-call overhead of the MCP tools", ""]
    overhead = results.get("overhead") or []
    if not overhead:
        return lines + [f"Overhead: {NOT_MEASURED}."]
    rows = []
    for entry in overhead:
        samples = samples_of(entry, "samples_ms")
        rows.append(
            [
                cell(entry.get("tool", "?")),
                cell(entry.get("transport", "?")),
                fmt_num(len(samples) if samples else entry.get("n")),
                fmt_ms(percentile(samples, 50)),
                fmt_ms(percentile(samples, 99)),
                fmt_ms(float(np.mean(samples)) if samples else None),
            ]
        )
    lines += table(["tool", "transport", "calls", "p50 ms", "p99 ms", "mean ms"], rows, "llrrrr")
    return lines


def throughput_section(results: dict) -> list[str]:
    lines = ["## Throughput", ""]
    throughput = results.get("throughput") or []
    if not throughput:
        return lines + [f"Throughput: {NOT_MEASURED}."]
    rows = []
    for entry in throughput:
        calls, seconds = entry.get("calls"), entry.get("seconds")
        rate = calls / seconds if calls is not None and seconds else None
        rows.append(
            [
                fmt_num(entry.get("clients")),
                cell(entry.get("transport", "?")),
                fmt_num(calls),
                fmt_num(seconds, 2),
                fmt_num(rate),
            ]
        )
    lines += table(["clients", "transport", "calls", "seconds", "calls/s"], rows, "rlrrr")
    return lines


def memory_section(results: dict) -> list[str]:
    lines = ["## Memory under concurrent queries", ""]
    memory = results.get("memory") or []
    if not memory:
        return lines + [f"Memory: {NOT_MEASURED}."]
    rows = []
    for entry in memory:
        # The same failure repeated per client says nothing new: list each distinct message once.
        messages = list(dict.fromkeys(entry.get("failed_messages") or []))
        rows.append(
            [
                fmt_num(entry.get("clients")),
                fmt_num(entry.get("pool_mib")),
                fmt_num(entry.get("baseline_rss_mib"), 1),
                fmt_num(entry.get("peak_rss_mib"), 1),
                fmt_num(entry.get("ok")),
                fmt_num(entry.get("failed")),
                cell("; ".join(m if len(m) <= 160 else m[:157] + "..." for m in messages)) or "—",
            ]
        )
    lines += table(
        ["clients", "pool MiB", "baseline RSS MiB", "peak RSS MiB", "ok", "failed", "failures"], rows, "rrrrrrl"
    )
    return lines


def scan_section(results: dict) -> list[str]:
    lines = ["## Scan rate", ""]
    scan = results.get("scan") or {}
    nbytes = scan.get("bytes")
    if not nbytes:
        return lines + [f"Scan rate: {NOT_MEASURED}."]
    readers = [
        ("parley_s", "Parley `query` tool"),
        ("datafusion_s", "DataFusion + iceberg-datafusion"),
        ("duckdb_s", "DuckDB"),
        ("raw_read_s", "raw read of the data files"),
    ]
    rates = {key: nbytes / 1e6 / scan[key] if scan.get(key) else None for key, _ in readers}
    rows = [
        [label, fmt_num(scan.get(key), 3), fmt_num(rates[key], 1), fmt_ratio(ratio(rates[key], rates["raw_read_s"]))]
        for key, label in readers
    ]
    lines.append(
        f"Query `{scan.get('query', '?')}` over the {fmt_num(scan.get('files'))} data files of its table, "
        f"{fmt_num(nbytes / 1e6, 1)} MB: MB/s is those bytes over each reader's median wall time "
        "(1 MB = 10^6 bytes), and the last column is that rate over the raw read rate of the same files."
    )
    lines.append("")
    lines += table(["reader", "seconds", "MB/s", "÷ raw read rate"], rows, "lrrr")
    lines.append("")
    share = ratio(rates["parley_s"], rates["raw_read_s"])
    lines.append(
        f"Parley / raw read: **{fmt_ratio(share)}**." if share is not None else f"Parley / raw read: {NOT_MEASURED}."
    )
    return lines


# ---- chart ---------------------------------------------------------------------------------------------------


def latency_chart(results: dict, path: str) -> None:
    """Grouped bars of median ms per query (log scale), and below them the ratios a/b and a/c."""
    latency = results.get("latency") or []
    stats = [latency_stats(e) for e in latency]
    has_data = any(s[key][0] for s in stats for key, _, _ in ENGINES)
    if not has_data:
        fig, ax = plt.subplots(figsize=(12, 3))
        ax.text(0.5, 0.5, f"Query latency: {NOT_MEASURED}", ha="center", va="center", fontsize=16)
        ax.axis("off")
        fig.savefig(path, dpi=150)
        plt.close(fig)
        return

    names = [str(e.get("query", "?")) for e in latency]
    x = np.arange(len(names))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1]}, constrained_layout=True
    )
    width = 0.27
    all_medians = [s[key][0] for s in stats for key, _, _ in ENGINES if s[key][0]]
    # Log scale; headroom above the tallest bar keeps the legend clear of the bars.
    floor, ceiling = min(all_medians) / 2, max(all_medians) * 8
    top.set_yscale("log")
    top.set_ylim(floor, ceiling)
    for i, (key, label, colour) in enumerate(ENGINES):
        offset = (i - 1) * width
        medians = [s[key][0] for s in stats]
        top.bar(x + offset, [np.nan if m is None else m for m in medians], width, label=label, color=colour)
        for xi, m in zip(x, medians, strict=True):
            if m is None:  # say so, rather than leave a gap that reads as "very fast"
                top.text(
                    xi + offset, floor * 1.15, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="grey"
                )
    top.set_ylabel("median latency (ms, log scale)")
    sf = results.get("sf")
    top.set_title(f"TPC-H{f' SF {sf}' if sf is not None else ''}: median query latency per engine")
    top.legend(loc="upper left", ncols=3, frameon=False)
    top.grid(axis="y", which="major", alpha=0.3)

    # Each ratio in the colour of the peer it divides by.
    ratios = [s[key] for s in stats for key in ("a/b", "a/c") if s[key]]
    for i, (key, label, marker, colour) in enumerate(
        [("a/b", "a/b Parley / DataFusion", "o", ENGINES[1][2]), ("a/c", "a/c Parley / DuckDB", "s", ENGINES[2][2])]
    ):
        values = [np.nan if s[key] is None else s[key] for s in stats]
        bottom.scatter(x + (i - 0.5) * width, values, label=label, marker=marker, color=colour, zorder=3)
    bottom.axhline(1.0, color="black", linestyle="--", linewidth=1)
    bottom.set_yscale("log", base=2)
    bottom.set_ylim(min([1.0, *ratios]) / 1.5, max([1.0, *ratios]) * 3)
    bottom.set_ylabel("ratio (log scale)")
    if ratios:
        bottom.legend(loc="upper left", ncols=2, frameon=False)
    else:
        bottom.text(0.5, 0.5, f"ratios: {NOT_MEASURED}", transform=bottom.transAxes, ha="center", va="center")
    bottom.grid(axis="y", which="major", alpha=0.3)
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bottom.yaxis.set_minor_formatter(NullFormatter())

    # A dotted separator where the TPC-H queries end and the agent-style ones begin.
    kinds = [e.get("kind") for e in latency]
    for i in range(1, len(kinds)):
        if kinds[i] != kinds[i - 1]:
            for ax in (top, bottom):
                ax.axvline(i - 0.5, color="grey", linestyle=":", linewidth=1)
    bottom.set_xticks(x, names, rotation=45 if len(names) > 16 else 0, ha="right" if len(names) > 16 else "center")
    bottom.set_xlim(-0.6, len(names) - 0.4)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    results_path, outdir = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        results = json.load(f)
    os.makedirs(outdir, exist_ok=True)

    lines = []
    for section in [
        header_section,
        method_section,
        latency_section,
        overhead_section,
        throughput_section,
        memory_section,
        scan_section,
    ]:
        lines += section(results)
        while lines[-1] == "":
            lines.pop()
        lines.append("")
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    latency_chart(results, os.path.join(outdir, "latency.png"))
    print(f"wrote {outdir}/report.md and {outdir}/latency.png", file=sys.stderr)


if __name__ == "__main__":
    main()
