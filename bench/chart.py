"""Draws bench/results.png from bench/results.json: per workload, each method's median
time relative to Nix's own remote builds (b), on a log scale, with min-max whiskers."""
import json
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("chart.py needs matplotlib: pip install matplotlib")

src, dst = sys.argv[1], sys.argv[2]
data = json.load(open(src))
results = data["results"]
methods = [("a", "edict", "tab:blue"), ("b", "nix --builders", "tab:orange"), ("c", "--store ssh-ng + copy", "tab:green"), ("d", "floor (rsync+ssh+copy)", "tab:red")]
workloads = sorted(results)
fig, ax = plt.subplots(figsize=(9, 4.5))
width = 0.2
for i, (m, label, color) in enumerate(methods):
    xs, ys, lo, hi = [], [], [], []
    for j, w in enumerate(workloads):
        r = results[w].get(m)
        if not r or "median" not in r:
            continue
        xs.append(j + (i - 1.5) * width)
        ys.append(r["median"])
        lo.append(r["median"] - r["min"])
        hi.append(r["max"] - r["median"])
    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=label, color=color)
ax.set_xticks(range(len(workloads)))
ax.set_xticklabels([w.upper() for w in workloads])
ax.set_yscale("log")
ax.set_ylabel("seconds (median, log scale)")
ax.set_title(f"edict vs Nix remote builds: {data['rate_mbit']} Mbit/s, {data['rtt_ms']} ms RTT, scale {data['scale']}")
ax.legend()
fig.tight_layout()
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
