"""Plots for docs/performance.md from benchmarks/engine.py's --json output.

python benchmarks/plot.py benchmarks/.work/engine.json [OUT_DIR]   # writes docs/img/*.png (needs matplotlib)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "localserve-http": "localserve (daemon, HTTP)",
    "localserve": "localserve engine (no HTTP)",
    "llama-server": "llama-server -kvu",
    "llama-cpp-python": "llama_cpp.server",
}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    data = json.loads(Path(sys.argv[1]).read_text())
    streams = sorted(int(n) for n in data["streams"])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    for key, ylabel, filename, scale in (
        ("tok_s", "aggregate output tokens/s", "throughput.png", "linear"),
        # Log: llama_cpp.server serves one stream at a time, so its TTFT grows ~linearly.
        ("ttft_p50", "time to first token, p50 (s)", "ttft.png", "log"),
    ):
        figure, axes = plt.subplots(figsize=(6, 4))
        for server, label in LABELS.items():
            if server not in data["streams"][str(streams[0])]:
                continue  # not run (engine.py --peers)
            values = [data["streams"][str(n)][server][key] for n in streams]
            axes.plot(streams, values, marker="o", label=label)
        axes.set_xlabel("concurrent streams")
        axes.set_ylabel(ylabel)
        axes.set_yscale(scale)
        # Plain numbers on the axis (0.2, 0.4), not powers of ten.
        axes.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axes.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axes.set_xticks(streams)
        axes.set_title(
            f"{data['model']}, {data['threads']} threads, {data['tokens']} tokens/stream"
        )
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(out / filename, dpi=100)
        print(out / filename)


if __name__ == "__main__":
    main()
