"""How fast `localserve --help` starts, against the floor: `python -c "import typer, rich"`.

    python benchmarks/cli_start.py [--runs 20]

The two commands run alternately (so a busy machine slows both alike), each as a
fresh process; the medians and their ratio are printed, and the exit status is 1
when the ratio is above the target (1.3, issue 33). Then `python -X importtime` checks that
`--help` imports none of the heavy libraries (pydantic, httpx, huggingface_hub,
uvicorn, llama_cpp, prompt_toolkit) and lists the slowest imports.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = 1.3
HEAVY = ("pydantic", "httpx", "huggingface_hub", "uvicorn", "llama_cpp", "prompt_toolkit")


def localserve_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs)."""
    script = Path(sys.executable).with_name("localserve")
    if script.exists():
        return [str(script)]
    found = shutil.which("localserve")
    return [found] if found else [sys.executable, "-m", "localserve"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def import_times(module_args: list[str]) -> list[tuple[int, str]]:
    """(cumulative µs, module) for every module a command imports, slowest first."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *module_args],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (20)")
    args = parser.parse_args()

    help_command = [*localserve_command(), "--help"]
    floor_command = [sys.executable, "-c", "import typer, rich"]
    for command in (help_command, floor_command):  # warm the page cache and .pyc files
        timed(command)
    help_times: list[float] = []
    floor_times: list[float] = []
    for _ in range(args.runs):
        help_times.append(timed(help_command))
        floor_times.append(timed(floor_command))
    help_median = statistics.median(help_times)
    floor_median = statistics.median(floor_times)
    ratio = help_median / floor_median
    print(f"{' '.join(help_command)}")
    print(f"  median {help_median * 1000:.1f} ms over {args.runs} runs")
    print(f"{' '.join(floor_command)}")
    print(f"  median {floor_median * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio {ratio:.2f} (target <= {TARGET})")

    imports = import_times(["-m", "localserve", "--help"])
    heavy = sorted({name for _, name in imports if name.split(".")[0] in HEAVY})
    print("heavy imports:", ", ".join(heavy) if heavy else "none")
    print("slowest imports (cumulative):")
    for micros, name in imports[:8]:
        print(f"  {micros / 1000:7.1f} ms  {name}")
    return 0 if ratio <= TARGET and not heavy else 1


if __name__ == "__main__":
    raise SystemExit(main())
