"""The bench's printed report."""

from __future__ import annotations

from yelp_lora.bench.prediction import PREDICT_PATHS
from yelp_lora.modeling.hardware import AutoChoice, format_auto_choices


def format_report(result: dict) -> str:
    machine = result["machine"]
    device = machine.get("gpu") or f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads)"
    peak = result["peak_flops"]
    isa = result.get("instruction_sets")
    lines = [
        f"Machine: {device}; load average {machine['load_average_start'][0]:.1f} at start, "
        f"{machine['load_average_end'][0]:.1f} at end",
        f"Model: {result['base_model']}; adapter for prediction: {result['adapter'] or 'none (no prediction path)'}",
        "Matmul peak: " + ", ".join(
            f"{name} {rate / 1e9:.0f} G{'OP' if name == 'int8' else 'FLOP'}/s" + (f" ({isa[name]})" if isa else "")
            for name, rate in peak.items()
        ) + f" (best of {len(result['peak_flops_measured'])} measurements: start, before each round, end; "
        "of peak: model FLOP/s over the peak of the path's own precision)",
    ]
    if isa:
        lines.append(f"torch's kernels dispatched to {isa['torch_kernels']}")
    if result.get("auto"):
        lines += ["What `auto` chooses on this machine (train, predict, serve and MCP alike), and why:",
                  format_auto_choices([AutoChoice(**choice) for choice in result["auto"]])]
    lines.append("")
    settings = result["settings"]
    header = f"{'':40} {'samples/s':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>7} {'peak RSS':>9}"
    if result["training"]:
        lines.append(
            f"Training: {settings['samples']} train rows, one pass, batch {settings['batch_size']}, "
            f"in {_count(len(result['training'][0]['round_samples_per_s']), 'round')}, the paths taking turns"
        )
        lines.append(header + f" {'val F1':>7} {'pad %':>6}  rounds: samples/s")
        for row in result["training"]:
            padding = 100 * (1 - row["real_tokens"] / row["computed_tokens"])
            lines.append(_row(row) + f" {row['val_macro_f1']:7.4f} {padding:6.1f}  {_rounds(row)}")
        lines.append("")
    if result["prediction"]:
        rows = result["prediction"][0]["rows"]
        lines.append(
            f"Prediction: {rows} test.csv rows in {_count(len(result['prediction'][0]['round_samples_per_s']), 'round')}, "
            "the paths taking turns on each round's chunk; length-sorted batches of the given size "
            "(the pipeline: one text at a time)"
        )
        lines.append(header + f" {'macro-F1':>8} {'ΔF1 pts':>7} {'batch':>5}  rounds: samples/s")
        for row in result["prediction"]:
            delta = result["macro_f1_vs_fp32"].get(row["path"])
            lines.append(
                _row(row) + f" {row['macro_f1']:8.4f} {100 * delta if delta is not None else float('nan'):7.2f}"
                f" {row['batch_size']:5d}  {_rounds(row)}"
            )
        lines.append("")
    service = result["service"]
    if service.get("available"):
        lines.append(
            f"Service on {PREDICT_PATHS[service['path']]} (one review per request; "
            f"server peak RSS {service['server_peak_rss_mib']:.0f} MiB)"
        )
        lines.append(f"{'':40} {'samples/s':>9} {'p50 ms':>9} {'p99 ms':>8} {'errors':>7} {'load generator CPU':>19}")
        for level in service["levels"]:
            lines.append(
                f"  {level['clients']:>3} concurrent clients{'':16} {level['samples_per_s']:9.1f} "
                f"{level['p50_ms']:9.1f} {level['p99_ms']:8.1f} {level['errors']:7d} {level['client_cpu_share']:19.1%}"
            )
        offline = next(r["samples_per_s"] for r in result["prediction"] if r["path"] == service["path"])
        lines.append(f"  offline batch prediction, same path{'':5} {offline:9.1f}")
    else:
        lines.append(f"service: not available ({service.get('reason')})")
    lines.append("")
    speed = result["speedup"]
    for name in ("training", "prediction"):
        if speed[name] is not None:
            lines.append(f"Speed-up, {name}: {speed[name]:.2f}x the usual way's samples/s")
    if result["workdir"]:  # --keep-work
        made = ["training outputs and logs"]
        if any(row["path"] == "ours" for row in result["training"]) and not result["settings"]["adapter"]:
            made.append("the adapter its own training wrote")
        if result["settings"]["model"] == "bert-base":
            made.append("the random bert-base")
        lines.append(f"Work files ({', '.join(made)}): {result['workdir']} (delete when done)")
    return "\n".join(lines)


def _row(row: dict) -> str:
    return (
        f"  {row['label']:<38} {row['samples_per_s']:9.2f} {row['tokens_per_s']:9.0f} {row['flops_per_s'] / 1e9:8.1f} "
        f"{100 * row['of_peak']:6.1f}% {row['peak_rss_mib']:6.0f} MiB"
    )


def _rounds(row: dict) -> str:
    return " ".join(f"{rate:.3g}" for rate in row["round_samples_per_s"])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
