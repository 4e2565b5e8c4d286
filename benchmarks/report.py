"""The report: the tables of times, ratios, memory and mismatches for the file-system and container
workloads."""

import math
import statistics

from benchutil import MiB
from contenders import DAEMONS, PYUNIONFS, RATIO_LABEL
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


def med(results, key):
    v = results.get(key)
    return statistics.median(v) if v else None


def table(cols, rows):
    """Left-aligned columns, a rule under the heading."""
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(cols, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    return out


def ratio_columns(contenders, refs=("fuse-overlayfs", "kernel")):
    """(label, pyunionfs contender, reference) for every pyunionfs backend shown: py/fo, py3/fo, py/kern..."""
    pys = [c for c in contenders if c in PYUNIONFS]
    short = {"fuse-overlayfs": "fo", "kernel": "kern"}
    return [(f"{RATIO_LABEL[p]}/{short[r]}", p, r) for r in refs for p in pys]


def fs_ratios(results, workloads, py):
    """{(workload, mode): median(py) / median(fuse-overlayfs)} for the rows where both were measured."""
    out = {}
    for wl in workloads:
        for mode in wl.modes:
            a, b = med(results, (wl.name, mode, py)), med(results, (wl.name, mode, "fuse-overlayfs"))
            if a is not None and b:
                out[(wl.name, mode)] = a / b
    return out


# Issue 14's targets, each on pyunionfs / fuse-overlayfs (medians): (label, rows it covers, limit).
FS_TARGETS = [
    ("find warm", [("find", "warm")], 1.2),
    ("walk warm", [("walk", "warm")], 1.2),
    ("ls -lR warm", [("ls-lR", "warm")], 1.2),
    ("untar (cold, warm)", [("untar", "cold"), ("untar", "warm")], 1.5),
    ("seq-read (cold, warm)", [("seq-read", "cold"), ("seq-read", "warm")], 0.8),
    ("seq-write", [("seq-write", "cold")], 0.8),
]


def fs_targets(results, contenders, workloads):
    """The targets of issue 14 for every pyunionfs backend: rows of (target, limit, value, met, ...)."""
    pys = [c for c in contenders if c in PYUNIONFS]
    if not pys or "fuse-overlayfs" not in contenders:
        return []
    per = {p: fs_ratios(results, workloads, p) for p in pys}
    rows = []

    def row(label, limit, values):  # values: {py: (shown, met or None)}
        r = [label, limit]
        for p in pys:
            shown, ok = values.get(p, ("-", None))
            r += [shown, "-" if ok is None else "met" if ok else "NOT met"]
        rows.append(r)

    gm, worst = {}, {}
    for p in pys:
        rs = per[p]
        if rs:
            g = math.exp(sum(math.log(v) for v in rs.values()) / len(rs))
            gm[p] = (f"{g:.2f} ({len(rs)} rows)", g <= 1.0)
            (wn, wm), wv = max(rs.items(), key=lambda kv: kv[1])
            worst[p] = (f"{wv:.2f} ({wn} {wm})", wv <= 1.5)
    row("geometric mean of the ratios", "<= 1.0", gm)
    row("largest ratio", "<= 1.5", worst)
    for label, keys, limit in FS_TARGETS:
        vals = {}
        for p in pys:
            got = [per[p][k] for k in keys if k in per[p]]
            if got:
                vals[p] = ("/".join(f"{v:.2f}" for v in got), max(got) <= limit)
        row(label, f"<= {limit}", vals)
    return rows


def target_lines(title, rows, pys):
    if not rows or not any(x != "-" for r in rows for x in r[2:]):
        return []
    cols = ["target", "limit"]
    for p in pys:
        cols += [p, "met?"]
    return ["", title, *table(cols, rows)]


def report(results, contenders, workloads, mem, extras, errors, sigs, skipped, header):
    lines = [""]
    lines.append("=" * 100)
    lines += header
    for c, why in skipped.items():
        lines.append(f"skipped {c}: {why}")
    rcols = ratio_columns(contenders)
    cols = ["workload", "mode"] + contenders + [label for label, _, _ in rcols]
    rows = []
    for wl in workloads:
        for mode in wl.modes:
            r = [wl.name, mode]
            for c in contenders:
                r.append(cell(results.get((wl.name, mode, c))))
            for _, py, ref in rcols:
                r.append(ratio(results.get((wl.name, mode, py)), results.get((wl.name, mode, ref))))
            rows.append(r)
    lines.append("")
    lines.append(
        "time: median (min-max) over repetitions; pyunionfs = the native FUSE backend (-o backend=native), "
        "pyunionfs-pyfuse3 = -o backend=pyfuse3;"
    )
    lines.append(
        "py/fo, py3/fo = pyunionfs, pyunionfs-pyfuse3 over fuse-overlayfs; py/kern, py3/kern = over the kernel "
        "(medians; < 1 means pyunionfs is faster)"
    )
    if rows:
        lines += table(cols, rows)
    pys = [c for c in contenders if c in PYUNIONFS]
    lines += target_lines(
        "targets (issue 14), pyunionfs / fuse-overlayfs, medians (a row of two modes shows both; the larger counts):",
        fs_targets(results, contenders, workloads),
        pys,
    )

    daemons = [c for c in contenders if c in DAEMONS]
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
        lines += table(["workload"] + daemons, mrows)
        lines += cpu_lines(extras, daemons, workloads)

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


def fmt_n(n):
    return f"{n / 1000:.1f}k" if n >= 10000 else f"{n:.0f}"


def cpu_lines(extras, daemons, workloads):
    """The daemons' CPU per FUSE request in each timed run (median over repetitions), and the requests."""
    label = {"fuse-overlayfs": "fo", **RATIO_LABEL}
    rows, tot = [], {d: [0.0, 0, 0.0] for d in daemons}  # cpu with a count, requests, cpu without one
    for wl in workloads:
        for mode in wl.modes:
            r = [wl.name, mode]
            for d in daemons:
                ex = [e for e in extras.get((wl.name, mode, d), []) if e.get("daemon_cpu") is not None]
                counted = [e for e in ex if e.get("requests")]
                if counted:
                    r.append(fmt_n(statistics.median(e["requests"] for e in counted)))
                    r.append(f"{statistics.median(e['daemon_cpu'] / e['requests'] for e in counted) * 1e6:.1f}")
                    tot[d][0] += sum(e["daemon_cpu"] for e in counted)
                    tot[d][1] += sum(e["requests"] for e in counted)
                elif ex:
                    r += ["-", f"({fmt_t(statistics.median(e['daemon_cpu'] for e in ex))} a run)"]
                    tot[d][2] += sum(e["daemon_cpu"] for e in ex)
                else:
                    r += ["-", "-"]
            rows.append(r)
    if not rows or all(x == "-" for r in rows for x in r[2:]):
        return []
    r = ["all timed runs", ""]
    for d in daemons:
        cpu, n, _ = tot[d]
        r += [fmt_n(n), f"{cpu / n * 1e6:.1f}"] if n else ["-", "-"]
    rows.append(r)
    cols = ["workload", "mode"]
    for d in daemons:
        cols += [f"{label[d]} req", f"{label[d]} us/req"]
    return [
        "",
        "daemon CPU per FUSE request (us): the daemon's CPU time (user+system, all threads) over the timed run / the",
        "requests the kernel sent it (fuse:fuse_request_send; FORGETs not counted); median over repetitions of each",
        "run's quotient; req = median requests a run; fo = fuse-overlayfs, py = pyunionfs (native backend),",
        "py3 = pyunionfs-pyfuse3; '(T a run)': CPU of the run, where requests could not be counted",
        *table(cols, rows),
    ]


def ctr_report(results, names, workloads, startup, sigs, skipped, startup_note):
    """The container and start-up tables (kernel, fuse-overlayfs, pyunionfs's backends), and issue 12's
    targets."""
    lines = []
    for c, why in skipped.items():
        lines.append(f"containers: skipped {c}: {why}")
    rcols = ratio_columns(names)
    cols = ["workload", "stat"] + names + [label for label, _, _ in rcols]
    rows = []
    for wl in workloads + ([StartupWorkload()] if startup else []):
        for mode in wl.modes:
            rows.append(
                [wl.name, mode]
                + [cell(results.get((wl.name, mode, c))) for c in names]
                + [ratio(results.get((wl.name, mode, py)), results.get((wl.name, mode, ref))) for _, py, ref in rcols]
            )
    if rows:
        lines.append("")
        lines.append(
            "containers: podman with each mount program on a private storage; median (min-max) over "
            "repetitions of each repetition's statistic (startup: over all start-ups)"
        )
        lines += table(cols, rows)
    if startup_note:
        lines.append(f"startup: not measured: {startup_note}")

    pys = [c for c in names if c in PYUNIONFS]
    trows = []
    for wname, mode, label, limit in (
        ("podman-run", "median", "podman run --rm IMG true", 1.25),
        ("podman-diff", "median", "podman diff", 1.5),
        ("podman-commit", "median", "podman commit", 1.5),
    ):
        r = [label + " / fuse-overlayfs", f"<= {limit}"]
        fo = med(results, (wname, mode, "fuse-overlayfs"))
        for p in pys:
            py = med(results, (wname, mode, p))
            if py is None or not fo:
                r += ["-", "-"]
            else:
                r += [f"{py / fo:.2f} ({fmt_t(py)})", "met" if py / fo <= limit else "NOT met"]
        trows.append(r)
    r = ["exec -> first answered stat", "<= 150ms"]
    for p in pys:
        py = med(results, ("startup", "exec->stat", p))
        r += ["-", "-"] if py is None else [fmt_t(py), "met" if py <= 0.150 else "NOT met"]
    trows.append(r)
    lines += target_lines("targets (issue 12), medians:", trows, pys)
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
