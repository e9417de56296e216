"""The benchmark report: the table, the target checks, the JSON.

Ratio convention, used everywhere: how many times as fast layerfs is than
the peer.  For times that is the peer's figure divided by layerfs's; for
throughput (MB/s) layerfs's divided by the peer's.  Above 1.00x layerfs is
faster.

The targets (from the layerfs performance issue):
  T1  every cold figure at 128 layers at least 3x as fast as fuse-overlayfs
  T2  bottom-layer and negative lookups at 128 layers at least as fast as
      kernel overlayfs (checked cold and warm)
  T3  layerfs's own cold stat, bottom-layer and negative lookups at 128 and
      500 layers within 1.5x of its own 1-layer figures
  T4  warm figures within 1.2x of kernel overlayfs (every stack height)
  T5  mount at 128 layers in a third of fuse-overlayfs's time
"""

import table
from table import fmt  # noqa: F401  (benchmarks/run logs with report.fmt)

TARGETS = {
    "T1": "every cold figure at 128 layers >= 3x as fast as fuse-overlayfs",
    "T2": "bottom-only and negative lookups at 128 layers >= kernel overlayfs (cold and warm)",
    "T3": "own cold stat / bottom-only / negative at 128 and 500 layers <= 1.5x own 1-layer time",
    "T4": "warm figures within 1.2x of kernel overlayfs (vs kernel >= 0.83x)",
    "T5": "mount at 128 layers <= 1/3 of fuse-overlayfs's time (vs fuse-ovl >= 3x)",
}
T3_WORKLOADS = ("stat_all", "stat_bottom", "negative")
T2_WORKLOADS = ("stat_bottom", "negative")
SYSTEMS = ("layerfs", "kernel", "fuse-overlayfs")     # the figure columns, in order
PEERS = ("kernel", "fuse-overlayfs")                  # the ratio columns, in order


class Result:
    """One figure: the median VALUE of SAMPLES; BAD counts wrong answers."""

    def __init__(self, value, samples, bad):
        self.value = value
        self.samples = samples
        self.bad = bad


def _times_as_fast(lfs, peer, higher_is_better):
    if lfs is None or peer is None or lfs.value <= 0 or peer.value <= 0:
        return None
    return lfs.value / peer.value if higher_is_better else peer.value / lfs.value


class Check:
    def __init__(self, tid, wl, state, layers, figure, need, what):
        self.tid = tid
        self.wl = wl
        self.state = state
        self.layers = layers
        self.figure = figure      # the ratio that is compared, or None
        self.need = need          # (">=" or "<=", bound)
        self.what = what
        self.wrong = False        # layerfs gave wrong answers for this figure

    @property
    def status(self):
        if self.figure is None:
            return "n/a"
        if self.wrong:
            return "MISSED"
        op, bound = self.need
        ok = self.figure >= bound if op == ">=" else self.figure <= bound
        return "met" if ok else "MISSED"

    def line(self):
        op, bound = self.need
        fig = "n/a" if self.figure is None else f"{self.figure:.2f}x"
        extra = " (layerfs gave wrong results)" if self.wrong else ""
        return table.target_line(self.status, f"{self.wl.title}, {self.state}, {self.layers} "
                                 f"layers: {self.what} {fig} (need {op} {bound:g}x){extra}")


class Report:
    def __init__(self, meta, workloads, layers, results, failed, notes):
        self.meta = meta
        self.workloads = workloads
        self.layers = layers
        self.results = results
        self.failed = failed
        self.notes = notes
        self.checks = self._checks()

    def get(self, wl, state, n, system):
        return self.results.get((wl.key, state, n, system))

    def ratio(self, wl, state, n, peer):
        return _times_as_fast(self.get(wl, state, n, "layerfs"),
                              self.get(wl, state, n, peer), wl.higher_is_better)

    def _states(self, wl):
        return ("cold",) if wl.key == "mount" else ("cold", "warm")

    def _checks(self):
        checks = []

        def add(tid, wl, state, n, figure, need, what):
            c = Check(tid, wl, state, n, figure, need, what)
            r = self.get(wl, state, n, "layerfs")
            c.wrong = bool(r and r.bad)
            checks.append(c)

        for wl in self.workloads:
            add("T1", wl, "cold", 128, self.ratio(wl, "cold", 128, "fuse-overlayfs"),
                (">=", 3), "vs fuse-ovl")
            if wl.key in T2_WORKLOADS:
                for state in ("cold", "warm"):
                    add("T2", wl, state, 128, self.ratio(wl, state, 128, "kernel"),
                        (">=", 1), "vs kernel")
            if wl.key in T3_WORKLOADS:
                base = self.get(wl, "cold", 1, "layerfs")
                for n in (128, 500):
                    r = self.get(wl, "cold", n, "layerfs")
                    fig = r.value / base.value if r and base and base.value > 0 else None
                    add("T3", wl, "cold", n, fig, ("<=", 1.5), "own time / own 1-layer time")
            if wl.key != "mount":
                for n in self.layers:
                    add("T4", wl, "warm", n, self.ratio(wl, "warm", n, "kernel"),
                        (">=", round(1 / 1.2, 2)), "vs kernel")
            else:
                add("T5", wl, "cold", 128, self.ratio(wl, "cold", 128, "fuse-overlayfs"),
                    (">=", 3), "vs fuse-ovl")
        return checks

    # ------------------------------------------------------------ text

    def _row_targets(self, wl, state, n):
        out = []
        for c in self.checks:
            if c.wl is wl and c.state == state and c.layers == n and c.figure is not None:
                tag = "ok" if c.status == "met" else "MISS"
                out.append(f"{c.tid}({c.figure:.2f}x) {tag}" if c.tid == "T3"
                           else f"{c.tid} {tag}")
        return ", ".join(out)

    def _cell(self, wl, state, n, system):
        return table.figure(self.get(wl, state, n, system), system in self.meta["systems"])

    def text(self):
        m = self.meta
        lines = []
        lines.append(table.run_line("layerfs benchmarks", m))
        lines.append(f"layerfs column: {m['layerfs_program']}"
                     + ("  (from $LAYERFS)" if m["layerfs_from_env"] else "")
                     + table.build_tag(m))
        sh = m["shape"]
        lines.append(f"stacks: bottom layer {sh['bottom_files']} files + a {sh['big_mib']} MiB "
                     f"file, {sh['layer_ops']} changes per upper layer; lists of "
                     f"{sh['list_len']} paths")
        for n, s in sorted(m["stacks"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"  {int(n):4d} layers: {s['entries']} merged entries "
                         f"({s['dirs']} dirs), {s['bottom_only_files']} bottom-only files")
        lines.append("cold = caches dropped (drop_caches=3) and a fresh mount, first pass, "
                     "median over mounts;")
        lines.append("warm = later passes on the same mount, median.  "
                     "Mount = command start to first stat() answered, median of every cold mount.")
        lines.append("vs kernel / vs fuse-ovl = how many times as fast layerfs is: the peer's "
                     "time / layerfs's time")
        lines.append("  (MB/s: layerfs's / the peer's).  Above 1.00x layerfs is faster.  "
                     "'!' = some wrong results (see notes).")
        lines.append("")

        cols = table.Table([34, 5, 6, 9, 9, 9, 9, 11], left=2)
        lines += table.underlined(cols.line(["workload (unit)", "state", "layers", "layerfs",
                                             "kernel", "fuse-ovl", "vs kernel", "vs fuse-ovl"])
                                  + "  targets")
        for wl in self.workloads:
            label = f"{wl.title} ({wl.unit})"
            for state in self._states(wl):
                for n in self.layers:
                    figures = [self._cell(wl, state, n, s) for s in SYSTEMS]
                    ratios = [table.times(self.ratio(wl, state, n, p)) for p in PEERS]
                    # rstrip: no trailing blanks when the last columns are empty
                    lines.append((cols.line([label, state, str(n), *figures, *ratios])
                                  + "  " + self._row_targets(wl, state, n)).rstrip())
                    label = ""
            lines.append("")

        lines.append("Targets:")
        for tid, text in TARGETS.items():
            cs = [c for c in self.checks if c.tid == tid]
            met = sum(c.status == "met" for c in cs)
            missed = sum(c.status == "MISSED" for c in cs)
            na = sum(c.status == "n/a" for c in cs)
            lines.append(f"{tid} {text}: {met} met, {missed} missed"
                         + (f", {na} not measured" if na else ""))
            # T4 has a check per warm figure; list only what was missed there.
            shown = [c for c in cs if c.status == "MISSED" or (tid != "T4" and c.status == "met")]
            lines.extend(c.line() for c in shown)

        notes = list(self.notes)
        if 1 in self.layers and "kernel" in m["systems"]:
            notes.insert(0, "kernel overlayfs at 1 layer is mounted with an extra empty layer "
                            "on top (it needs 2 lower layers without an upper one).")
        lines += table.notes_section(notes)
        return "\n".join(lines)

    # ------------------------------------------------------------ json

    def as_json(self):
        results = []
        for (wkey, state, n, system), r in sorted(self.results.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][1],
                                                                   kv[0][2], kv[0][3])):
            wl = next(w for w in self.workloads if w.key == wkey)
            results.append({
                "workload": wkey, "title": wl.title, "unit": wl.unit,
                "higher_is_better": wl.higher_is_better, "state": state, "layers": n,
                "system": system, "value": r.value, "samples": r.samples, "bad": r.bad,
                "vs_kernel": self.ratio(wl, state, n, "kernel") if system == "layerfs" else None,
                "vs_fuse_overlayfs": (self.ratio(wl, state, n, "fuse-overlayfs")
                                      if system == "layerfs" else None),
            })
        return {
            "meta": self.meta,
            "ratio_convention": "times as fast as the peer: peer time / layerfs time "
                                "(MB/s: layerfs / peer); > 1 means layerfs is faster",
            "results": results,
            "targets": [{"id": c.tid, "target": TARGETS[c.tid], "workload": c.wl.key,
                         "state": c.state, "layers": c.layers, "figure": c.figure,
                         "need": f"{c.need[0]} {c.need[1]:g}", "status": c.status}
                        for c in self.checks],
            "failed_mounts": [{"system": s, "layers": n, "reason": why}
                              for (s, n), why in self.failed.items()],
            "notes": self.notes,
        }
