"""The report: the tables of times, ratios, memory and mismatches for the file-system and container
workloads."""

import statistics

from benchutil import MiB
from workloads import StartupWorkload

# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def fmt_t(s):
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms" if s >= 0.01 else f"{s * 1000:.1f}ms"
    return f"{s:.2f}s" if s < 100 else f"{s:.0f}s"


def cell(ts):
    if not ts:
        return "-"
    med = statistics.median(ts)
    if len(ts) == 1:
        return fmt_t(med)
    return f"{fmt_t(med)} ({fmt_t(min(ts))}-{fmt_t(max(ts))})"


def ratio(a, b):
    if not a or not b:
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def report(results, contenders, workloads, mem, extras, errors, sigs, skipped, header):
    lines = [""]
    lines.append("=" * 100)
    lines += header
    for c, why in skipped.items():
        lines.append(f"skipped {c}: {why}")
    cols = ["workload", "mode"] + contenders + ["py/fo", "py/kern"]
    rows = []
    for wl in workloads:
        for mode in wl.modes:
            r = [wl.name, mode]
            for c in contenders:
                r.append(cell(results.get((wl.name, mode, c))))
            py = results.get((wl.name, mode, "pyunionfs"))
            r.append(ratio(py, results.get((wl.name, mode, "fuse-overlayfs"))))
            r.append(ratio(py, results.get((wl.name, mode, "kernel"))))
            rows.append(r)
    lines.append("")
    lines.append(
        "time: median (min-max) over repetitions; py/fo = pyunionfs / fuse-overlayfs, "
        "py/kern = pyunionfs / kernel (medians; < 1 means pyunionfs is faster)"
    )
    if rows:
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(cols, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))

    daemons = [c for c in contenders if c in ("fuse-overlayfs", "pyunionfs")]
    if daemons and workloads:
        lines.append("")
        lines.append("daemon memory: peak VmHWM (MiB) over the mounts of each workload, sampled before unmount")
        mrows = []
        for wl in workloads:
            r = [wl.name]
            for c in daemons:
                v = [m["VmHWM"] for m in mem.get((wl.name, c), []) if m]
                r.append(f"{max(v) / MiB:.1f}" if v else "-")
            mrows.append(r)
        if any(wl.name == "find" for wl in workloads):
            r = ["bytes/entry (find, cold)"]
            for c in daemons:
                v = [e["bytes_per_entry"] for e in extras.get(("find", "cold", c), []) if "bytes_per_entry" in e]
                r.append(f"{statistics.median(v):.0f}" if v else "-")
            mrows.append(r)
        mcols = ["workload"] + daemons
        mw = [max(len(str(x)) for x in col) for col in zip(mcols, *mrows)]
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(mcols, mw)))
        for r in mrows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, mw)))

    stall = []
    for wl in workloads:
        if wl.name.startswith("copyup"):
            for mode in wl.modes:
                parts = []
                for c in contenders:
                    v = [
                        e.get("stall_max_ms")
                        for e in extras.get((wl.name, mode, c), [])
                        if e.get("stall_max_ms") is not None
                    ]
                    if v:
                        parts.append(f"{c} {max(v):.0f}ms")
                if parts:
                    stall.append(f"  {wl.name} {mode}: " + ", ".join(parts))
    if stall:
        lines.append("")
        lines.append("worst lstat latency of a concurrent prober during the copy-up (other requests blocked?):")
        lines += stall

    mism = []
    for (wname, mode), per in sorted(sigs.items()):
        ref = per.get("plain", per.get("kernel"))
        for c, vals in per.items():
            for v in vals:
                if ref and v != ref[0]:
                    mism.append(f"  {wname} {mode}: {c} gave {v!r}, reference gave {ref[0]!r}")
                    break
    if mism:
        lines.append("")
        lines.append("RESULT MISMATCHES (signature differs from the plain/kernel reference):")
        lines += mism
    if errors:
        lines.append("")
        lines.append(f"ERRORS ({len(errors)}):")
        lines += ["  " + e for e in errors]
    lines.append("")
    return "\n".join(lines)


def ctr_report(results, names, workloads, startup, sigs, skipped, startup_note):
    """The container and start-up tables (kernel, fuse-overlayfs, pyunionfs), and the issue's targets."""
    lines = []
    for c, why in skipped.items():
        lines.append(f"containers: skipped {c}: {why}")
    cols = ["workload", "stat"] + names + ["py/fo", "py/kern"]
    rows = []
    for wl in workloads + ([StartupWorkload()] if startup else []):
        for mode in wl.modes:
            py = results.get((wl.name, mode, "pyunionfs"))
            rows.append(
                [wl.name, mode]
                + [cell(results.get((wl.name, mode, c))) for c in names]
                + [
                    ratio(py, results.get((wl.name, mode, "fuse-overlayfs"))),
                    ratio(py, results.get((wl.name, mode, "kernel"))),
                ]
            )
    if rows:
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        lines.append("")
        lines.append(
            "containers: podman with each mount program on a private storage; median (min-max) over "
            "repetitions of each repetition's statistic"
        )
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(cols, widths)))
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    if startup_note:
        lines.append(f"startup: not measured: {startup_note}")

    def med(wname, mode, c):
        v = results.get((wname, mode, c))
        return statistics.median(v) if v else None

    targets = []
    for wname, mode, label, limit in (
        ("podman-run", "median", "podman run --rm", 1.25),
        ("podman-diff", "median", "podman diff", 1.5),
        ("podman-commit", "median", "podman commit", 1.5),
    ):
        py, fo = med(wname, mode, "pyunionfs"), med(wname, mode, "fuse-overlayfs")
        if py is not None and fo is not None:
            r = py / fo
            targets.append(
                f"  {label}: py/fo {r:.2f} (target <= {limit}): {'met' if r <= limit else 'NOT met'}"
                f"  [pyunionfs {fmt_t(py)}, fuse-overlayfs {fmt_t(fo)}]"
            )
    py = med("startup", "exec->stat", "pyunionfs")
    if py is not None:
        targets.append(
            f"  exec -> first answered stat: pyunionfs {fmt_t(py)} (target <= 150ms): "
            f"{'met' if py <= 0.150 else 'NOT met'}"
        )
    if targets:
        lines.append("")
        lines.append("targets (issue 12):")
        lines += targets
    mism = []
    for wl in workloads:
        per = sigs.get((wl.name, "-"), {})
        ref = per.get("kernel") or per.get("fuse-overlayfs")
        for c, vals in per.items():
            for v in vals:
                if ref and v != ref[0]:
                    mism.append(f"  {wl.name}: {c} gave {v!r}, reference gave {ref[0]!r}")
                    break
    if mism:
        lines.append("")
        lines.append("CONTAINER RESULT MISMATCHES (against the kernel's, else fuse-overlayfs's):")
        lines += mism
    return lines
