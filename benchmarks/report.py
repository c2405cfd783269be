"""engine.py's tables: each function prints one part and returns its medians for --json."""

from __future__ import annotations

import statistics
from typing import Any

DAEMON = "localserve-http"
LABELS = {
    "localserve": "engine",
    DAEMON: "daemon",
    "llama-server": "llama-server",
    "llama-cpp-python": "llama_cpp.server",
}


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def header(args: Any, slots: int) -> None:
    print(
        f"\nmodel {args.model.name}, {args.threads} threads, {args.tokens} new tokens per stream,"
        f" {slots} slots x {args.ctx} context, {args.reps} reps, medians"
    )
    print("tok/s: aggregate output tokens per second; TTFT: time to first token;")
    print("decode: one stream's tokens after its first, per second (median over streams);")
    print("engine: localserve's runner without HTTP; daemon: all of localserve over HTTP\n")


def throughput(
    runs: dict[str, dict[int, list[dict[str, float]]]], streams: list[int], names: list[str]
) -> dict[int, dict[str, Any]]:
    print(f"{'streams':>7}  {'server':<17} {'tok/s':>7} {'TTFT p50':>9} {'p95':>9} {'decode':>7}  tokens")  # fmt: skip
    table: dict[int, dict[str, Any]] = {}
    for n in streams:
        row: dict[str, Any] = {}
        for name in names:
            results = runs[name][n]
            med = {key: statistics.median(r[key] for r in results) for key in results[0]}
            med["tokens"] = min(r["tokens"] for r in results)  # the shortest run, if any was
            row[name] = med
            short = "" if med["tokens"] == med["wanted"] else f" (fewest {med['tokens']:.0f}: stopped early)"  # fmt: skip
            print(
                f"{n:>7}  {LABELS[name]:<17} {med['tok_s']:>7.1f} {med['ttft_p50'] * 1000:>6.0f} ms"
                f" {med['ttft_p95'] * 1000:>6.0f} ms {med['decode_tok_s']:>7.1f}  {med['wanted']:.0f}{short}"
            )  # fmt: skip
        ours = row[DAEMON]
        for key, peer, field in (
            ("ratio_tok_s", "llama-server", "tok_s"),
            ("ratio_ttft_p50", "llama-server", "ttft_p50"),
            ("ratio_tok_s_llama_cpp_python", "llama-cpp-python", "tok_s"),
            ("ratio_ttft_p50_llama_cpp_python", "llama-cpp-python", "ttft_p50"),
            ("http_over_engine", "localserve", "tok_s"),
        ):
            if peer in row:
                row[key] = ours[field] / row[peer][field]
        table[n] = row

    print(f"\n{'streams':>7}  {'tok/s, TTFT p50: daemon / llama-server':>38}  {'daemon / llama_cpp.server':>25}  {'daemon / engine':>15}")  # fmt: skip
    for n, row in table.items():
        print(
            f"{n:>7}  {fmt(row.get('ratio_tok_s')):>31} {fmt(row.get('ratio_ttft_p50')):>6}"
            f"  {fmt(row.get('ratio_tok_s_llama_cpp_python')):>18} {fmt(row.get('ratio_ttft_p50_llama_cpp_python')):>6}"
            f"  {fmt(row.get('http_over_engine')):>15}"
        )  # fmt: skip
    return table


TARGETS = (  # (streams, ratio, bound, description); a bound below 1 means "at most"
    (8, "ratio_tok_s", 1.0, "8 streams: tok/s >= 1.0x llama-server (goal 1.1x)"),
    (8, "ratio_tok_s_llama_cpp_python", 5.0, "8 streams: tok/s >= 5x llama_cpp.server"),
    (1, "ratio_tok_s", 0.95, "1 stream: tok/s >= 0.95x llama-server"),
    (8, "ratio_ttft_p50", None, "8 streams: TTFT p50 <= 1.0x llama-server"),
)


def targets(table: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    print()
    results = []
    for n, key, at_least, label in TARGETS:
        value = table.get(n, {}).get(key)
        met = None
        if value is not None:
            met = value >= at_least if at_least is not None else value <= 1.0
        results.append({"target": label, "value": value, "met": met})
        verdict = "not measured" if met is None else "met" if met else "NOT MET"
        print(f"target {label}: {fmt(value)} {verdict}")
    return results


def memory(idle_daemon: float, rss: dict[str, dict[str, float]]) -> None:
    print("\nresident memory (MiB) after the throughput runs:")
    print(f"  daemon with no model loaded: {idle_daemon:.0f}")
    for name, processes in rss.items():
        print(f"  {LABELS[name]}: " + ", ".join(f"{k} {v:.0f}" for k, v in processes.items()))


def chat(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    print("\nchat: turn-2 TTFT against a cold prompt of the same length")
    out = {}
    for name, values in times.items():
        cold, turn2 = statistics.median(values["cold"]), statistics.median(values["turn2"])
        out[name] = {"cold_ttft": cold, "turn2_ttft": turn2, "ratio": turn2 / cold}
        print(f"  {LABELS[name]:<17} turn 2 {turn2 * 1000:>6.0f} ms, cold {cold * 1000:>6.0f} ms, ratio {turn2 / cold:.2f}")  # fmt: skip
    return out


def prefill(results: dict[str, dict[str, list[float]]], target: int) -> dict[str, dict[str, Any]]:
    print(
        f"\nprefill: ~{target}-token uncached prompt, 1 new token; the request's time is the measure"
    )
    out: dict[str, dict[str, Any]] = {}
    for name, values in results.items():
        own = values["server_tok_s"]
        entry: dict[str, Any] = {
            "prompt_tokens": statistics.median(values["tokens"]),
            "seconds": statistics.median(values["seconds"]),
            "tok_s": statistics.median(values["tok_s"]),
            "server_tok_s": statistics.median(own) if own else None,
        }
        out[name] = entry
        print(
            f"  {LABELS[name]:<17} {entry['prompt_tokens']:.0f} tokens in {entry['seconds'] * 1000:>5.0f} ms:"
            f" {entry['tok_s']:>5.0f} tok/s (the server's own figure: {fmt(entry['server_tok_s'], '.0f')})"
        )  # fmt: skip
    for peer in ("llama-server", "llama-cpp-python"):
        if peer in out:
            ratio = out[DAEMON]["tok_s"] / out[peer]["tok_s"]
            out[DAEMON][f"ratio_{peer}"] = ratio
            print(f"  daemon / {LABELS[peer]}: {ratio:.2f}")
    return out


def load(loads: dict[str, Any]) -> dict[str, Any]:
    print(
        f"\nmodel load (s); cold: page cache dropped by {loads['evict_method']}, after which at most"
        f" {fmt(loads['cached_after_evict_mb_max'], '.0f')} MiB of the file was still cached"
    )
    if loads["processes_mapping_model"]:
        print(f"  note: processes {loads['processes_mapping_model']} had the model mapped")
    medians = {}
    for name, states in loads["times"].items():
        cold, warm = statistics.median(states["cold"]), statistics.median(states["warm"])
        medians[name] = {"cold": cold, "warm": warm}
        print(f"  {name:<24} cold {cold:>6.2f}  warm {warm:>6.2f}")
    print("  localserve-http: the daemon's load_duration (runner start, model, KV cache); (wall):")
    print(
        "  the whole empty-prompt request; the others: process start until its health check is ok"
    )
    return {**loads, "median": medians}


def ceiling(
    rows: dict[int, dict[str, Any]], table: dict[int, dict[str, Any]], prompt_tokens: int
) -> dict[int, dict[str, Any]]:
    tokens = next(iter(rows.values()))["tg"]
    print(f"\nllama-batched-bench, the llama.cpp ceiling ({prompt_tokens}-token prompts, {tokens} new tokens)")  # fmt: skip
    print(f"{'streams':>7}  {'S_PP':>7} {'S_TG':>7} {'output tok/s':>12}  {'daemon tok/s':>12} {'daemon/S_TG':>11}")  # fmt: skip
    for n, row in rows.items():
        ours = table[n][DAEMON]["tok_s"]
        row["daemon_over_s_tg"] = ours / row["speed_tg"]
        print(f"{n:>7}  {row['speed_pp']:>7.1f} {row['speed_tg']:>7.1f} {row['output_tok_s']:>12.1f}  {ours:>12.1f} {row['daemon_over_s_tg']:>11.2f}")  # fmt: skip
    print("  S_TG: generation only; output tok/s: new tokens over the whole run, prompts included")
    return rows
