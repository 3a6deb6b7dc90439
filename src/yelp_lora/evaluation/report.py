"""`yelp-lora report`: one HTML page and a Markdown twin, with PNG figures beside them, from a trained run.

The page is built once as a list of blocks (heading, paragraph, table, figure, quoted review)
and rendered twice, so the HTML and the Markdown always say the same thing; it carries no
timestamp, so rerunning a report changes it only where the results change. report.json holds
every number and no review text; only the two pages quote (shortened) reviews.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yelp_lora.artifacts import (
    REPORT_DIRNAME, AdapterMeta, CompareResult, LongReviews, RunRecord, TemperatureScaling, read_run,
)
from yelp_lora.config import LABEL_NAMES, NUM_LABELS, EvalSettings
from yelp_lora.errors import DataError
from yelp_lora.evaluation.evaluate import EXTREMES, ScoredSample, compare_result, score_test_sample
from yelp_lora.metrics import bootstrap_ci, calibration
from yelp_lora.util.atomic import atomic_dir

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
MODEL_TITLES = {"baseline": "untuned baseline", "lora": "LoRA adapter", "classical": "TF-IDF + logistic regression"}
MODEL_COLOURS = {"baseline": "#9e9e9e", "lora": "#1f77b4", "classical": "#ff7f0e"}
# The adapter's probabilities before its temperature: a calibration panel of their own.
RAW = "lora_raw"
RAW_COLOUR = "#aec7e8"
EXAMPLE_CELLS = 8  # confusion cells with quoted reviews, farthest from the diagonal first
EXAMPLES_PER_CELL = 2
EXCERPT_CHARS = 300
SIGNIFICANCE = 0.05


# ---------------------------------------------------------------- document blocks


@dataclass
class Block:
    kind: str  # h1 | h2 | p | table | figure | quote
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table: header row first
    source: str = ""  # figure file, or a quote's caption


def render_html(title: str, blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        text = html.escape(block.text)
        if block.kind in ("h1", "h2", "p"):
            out.append(f"<{block.kind}>{text}</{block.kind}>")
        elif block.kind == "table":
            head, *body = block.rows
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
            out.append("</tbody></table>")
        elif block.kind == "figure":
            out.append(f'<figure><img src="{html.escape(block.source)}" alt="{text}"><figcaption>{text}</figcaption></figure>')
        elif block.kind == "quote":
            out.append(f"<blockquote><p>{text}</p><footer>{html.escape(block.source)}</footer></blockquote>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;margin:.8em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}"
    "blockquote{border-left:4px solid #1f77b4;margin:.6em 0;padding:.2em .9em;background:#f7f9fc}"
    "blockquote footer{color:#555;font-size:.85em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|])")


def _markdown_text(text: str) -> str:
    """Review text as inert Markdown: no emphasis, links or raw HTML can come out of it."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("&", "&amp;")


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.text}")
        elif block.kind == "h2":
            out.append(f"## {block.text}")
        elif block.kind == "p":
            out.append(block.text)
        elif block.kind == "table":
            head, *body = block.rows
            out.append("\n".join(
                ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(row) + " |" for row in body]
            ))
        elif block.kind == "figure":
            out.append(f"![{block.text}]({block.source})")
        elif block.kind == "quote":
            out.append(f"> {_markdown_text(block.text)}\n>\n> — {block.source}")
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return name


def figure_training(folder: Path, record: RunRecord) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    steps = record.history
    for ax, key, label in zip(axes.flat, ("loss", "learning_rate", "grad_norm"), ("training loss", "learning rate", "gradient norm")):
        points = [(s.step, getattr(s, key)) for s in steps if getattr(s, key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3)
        else:
            ax.text(0.5, 0.5, f"no step logs (logged every {record.config.train.logging_steps} steps,\n"
                    f"the run made {record.global_step})", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"{label} per step", xlabel="step")
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    epochs = record.validation
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        ax.plot([e.epoch for e in epochs], [getattr(e, key) for e in epochs], marker="o", label=f"validation {label}")
    if record.best_epoch:
        ax.axvline(record.best_epoch.epoch, color="#2ca02c", linestyle="--", label="kept (best macro-F1)")
    ax.set(title="validation per epoch", xlabel="epoch", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, folder, "training_curves.png")


def _heatmap(ax, matrix: np.ndarray, title: str, *, xlabel: str, ylabel: str, shading: np.ndarray | None = None) -> None:
    ax.imshow(matrix if shading is None else shading, cmap="Blues", vmin=0)
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            value = (shading if shading is not None else matrix / max(matrix.max(), 1))[i, j]
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color="white" if value > 0.55 else "black")
    ticks = [name.replace("_", "\n") for name in LABEL_NAMES]
    ax.set_xticks(range(NUM_LABELS), ticks, fontsize=7)
    ax.set_yticks(range(NUM_LABELS), ticks, fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)


def figure_confusion(folder: Path, result: CompareResult, names: list[str]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        matrix = np.array(result.detailed[name].confusion_matrix)
        recall_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # colour: share of the true class
        title = f"{MODEL_TITLES[name]} (acc {result.detailed[name].accuracy:.3f})"
        _heatmap(ax, matrix, title, xlabel="predicted", ylabel="true", shading=recall_share)
    fig.tight_layout()
    return _save(fig, folder, "confusion_matrices.png")


def figure_per_class(folder: Path, result: CompareResult, names: list[str]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    width = 0.8 / len(names)
    x = np.arange(NUM_LABELS)
    for ax, key in zip(axes, ("precision", "recall", "f1")):
        for k, name in enumerate(names):
            values = [getattr(result.detailed[name].per_class[label], key) for label in LABEL_NAMES]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=MODEL_TITLES[name], color=MODEL_COLOURS[name])
        ax.set_xticks(x, [name.replace("_", "\n") for name in LABEL_NAMES], fontsize=8)
        ax.set(title=key if key != "f1" else "F1", ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, folder, "per_class.png")


def figure_intervals(folder: Path, intervals: dict, names: list[str]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.55 * len(names)), sharey=True)
    for ax, key, label in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")):
        for k, name in enumerate(names):
            ci = intervals[name][key]
            ax.errorbar(ci["value"], k, xerr=[[ci["value"] - ci["low"]], [ci["high"] - ci["value"]]], fmt="o",
                        capsize=5, color=MODEL_COLOURS[name])
        ax.set_yticks(range(len(names)), [MODEL_TITLES[n] for n in names])
        ax.set(title=f"{label}, {intervals[names[0]]['level']:.0%} bootstrap interval", xlim=(0, 1))
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, folder, "intervals.png")


def figure_error_distance(folder: Path, scored: ScoredSample, names: list[str]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    offsets = np.arange(-(NUM_LABELS - 1), NUM_LABELS)
    labels = np.asarray(scored.rows.labels)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        distance = scored.predictions(name) - labels
        shares = [np.mean(distance == d) for d in offsets]
        ax.bar(offsets + (k - (len(names) - 1) / 2) * width, shares, width, label=MODEL_TITLES[name], color=MODEL_COLOURS[name])
    ax.set_xticks(offsets)
    ax.set(title="predicted − true stars", xlabel="stars off (negative: too harsh, positive: too kind)", ylabel="share of reviews")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, folder, "error_distance.png")


def figure_reliability(folder: Path, calibrations: dict, titles: dict[str, str]) -> str:
    """One reliability diagram per entry of `titles` (calibration key -> panel title), in its order."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(titles), figsize=(4.2 * len(titles), 4), squeeze=False, sharey=True)
    for ax, (name, title) in zip(axes[0], titles.items()):
        bins = calibrations[name]["bins"]
        filled = [b for b in bins if b["count"]]
        ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=[b["high"] - b["low"] for b in filled],
               align="edge", color=MODEL_COLOURS.get(name, RAW_COLOUR), edgecolor="white", label="accuracy in bin")
        ax.plot([b["confidence"] for b in filled], [b["confidence"] for b in filled], "k_", markersize=12, label="mean confidence")
        ax.plot([0, 1], [0, 1], color="#d62728", linestyle="--", linewidth=1, label="perfect calibration")
        for b in filled:
            ax.text((b["low"] + b["high"]) / 2, min(b["accuracy"] + 0.02, 0.95), str(b["count"]), ha="center", fontsize=7)
        ax.set(title=f"{title}\nECE {calibrations[name]['ece']:.3f}", xlabel="confidence (top class)", xlim=(0, 1), ylim=(0, 1))
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, folder, "reliability.png")


def figure_label_shift(folder: Path, scored: ScoredSample) -> str:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    moves = np.zeros((NUM_LABELS, NUM_LABELS), dtype=int)
    np.add.at(moves, (scored.predictions("baseline"), scored.predictions("lora")), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    _heatmap(ax, moves, "label shift: baseline → LoRA (same reviews)", xlabel="LoRA predicts", ylabel="baseline predicted")
    for i, j in EXTREMES:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.5))
    fig.tight_layout()
    return _save(fig, folder, "label_shift.png")


# ---------------------------------------------------------------- text


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The review on one line, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(ci: dict) -> str:
    return f"{ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def misclassified_cells(scored: ScoredSample, name: str = "lora") -> list[tuple[int, int, list[int]]]:
    """(true, predicted, review indices most confident first) for the cells worth reading:
    farthest from the diagonal first, then the most populated."""
    labels, predicted = np.asarray(scored.rows.labels), scored.predictions(name)
    confidence = scored.probabilities[name].max(axis=1)
    cells = []
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            members = np.flatnonzero((labels == i) & (predicted == j))
            if i != j and len(members):
                cells.append((i, j, members[np.argsort(-confidence[members], kind="stable")].tolist()))
    cells.sort(key=lambda cell: (-abs(cell[0] - cell[1]), -len(cell[2]), cell[0], cell[1]))
    return cells[:EXAMPLE_CELLS]


def _quote(scored: ScoredSample, index: int, caption: str) -> Block:
    return Block("quote", excerpt(scored.rows.texts[index]), source=f"{caption} · row {scored.rows.row_ids[index]}")


def build_blocks(record: RunRecord, run_dir: Path, scored: ScoredSample, result: CompareResult, *, intervals: dict,
                 calibrations: dict, figures: dict[str, str]) -> list[Block]:
    names = list(scored.probabilities)
    config = record.config
    test = result.data
    blocks = [
        Block("h1", f"yelp-lora report: {run_dir.name}"),
        Block("p", f"Base model {config.model.name_or_path}, LoRA r={config.lora.r} on "
                   f"{', '.join(config.lora.target_modules)}; trained on {record.data.train.rows} reviews "
                   f"(validation {record.data.validation.rows}) for {record.global_step} steps, seed "
                   f"{config.train.seed}, on {record.environment.hardware.cpu} "
                   f"({record.resolved.device}). Test sample: {result.n} reviews of {test.source} "
                   f"(stratified, seed {result.seed}, fingerprint {test.fingerprint[:12]})."),
        Block("h2", "Scores on the test sample"),
        Block("p", "Accuracy and macro-F1 with 95% percentile-bootstrap intervals "
                   f"({intervals[names[0]]['resamples']} resamples of the reviews). Labels are ordered star ratings, so "
                   "MAE counts stars off, within-one is the share at most one star off, and quadratic weighted kappa (QWK) "
                   "rewards near misses (1 = perfect, 0 = chance). ECE is the expected calibration error of the top "
                   "class's probability (0 = confidence matches accuracy)."),
        Block("table", rows=[["model", "accuracy [95% CI]", "macro-F1 [95% CI]", "MAE (stars)", "within one star", "QWK", "ECE"]] + [
            [MODEL_TITLES[n], _ci(intervals[n]["accuracy"]), _ci(intervals[n]["macro_f1"]),
             f"{result.ordinal[n].mae_stars:.3f}", f"{result.ordinal[n].within_one_star:.3f}",
             _pct(result.ordinal[n].qwk), f"{calibrations[n]['ece']:.3f}"]
            for n in names
        ]),
        Block("figure", "Accuracy and macro-F1 with their bootstrap intervals", source=figures["intervals"]),
        Block("h2", "Is the difference real? McNemar's paired test"),
        Block("p", "Every model read the same reviews, so the test looks only at the reviews on which exactly one "
                   f"of the two is right. p < {SIGNIFICANCE} means a difference this lopsided would be rare if both "
                   "models were equally accurate."),
        Block("table", rows=[["pair", "only LoRA right", "only the other right", "p-value", "test", "verdict"]] + [
            [f"LoRA vs {MODEL_TITLES[pair.removeprefix('lora_vs_')]}", str(t.only_first_right),
             str(t.only_second_right), f"{t.p_value:.4g}", t.method,
             "significant" if t.p_value < SIGNIFICANCE else "not significant"]
            for pair, t in result.mcnemar.items()
        ]),
    ]
    if "classical" in names:
        fit = result.classical_fit
        blocks.append(Block("p", f"The classical baseline is {fit.model}, fitted on the same {fit.train_rows} "
                                 f"training rows as the adapter (fingerprint {fit.train_fingerprint[:12]}), with C={fit.C} "
                                 "chosen on the run's validation rows."))
    blocks += [
        Block("h2", "Training"),
        Block("figure", "Training loss, learning rate and gradient norm per logged step; validation scores per epoch",
              source=figures["training"]),
        Block("table", rows=[["epoch", "step", "validation accuracy", "validation macro-F1", "validation loss"]] + [
            [f"{e.epoch:.2f}", str(e.step), f"{e.accuracy:.4f}", f"{e.macro_f1:.4f}", _pct(e.loss)]
            for e in record.validation
        ]),
        Block("h2", "Per class"),
        Block("figure", "Precision, recall and F1 per class", source=figures["per_class"]),
        Block("table", rows=[["model", "class", "precision", "recall", "F1", "support"]] + [
            [MODEL_TITLES[n], label, f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", str(row.support)]
            for n in names for label, row in result.detailed[n].per_class.items()
        ]),
        Block("figure", "Confusion matrices (counts; colour is the share of each true class)", source=figures["confusion"]),
        Block("h2", "How far off, in stars"),
        Block("figure", "Distribution of predicted minus true stars", source=figures["error_distance"]),
        *long_review_blocks(result.long_reviews, scored.meta, names, n=result.n),
        Block("h2", "Calibration"),
        Block("p", "Reviews are binned by the model's top-class probability; a calibrated model's bars reach the "
                   "diagonal. The number over each bar is how many reviews fell in the bin."),
        *temperature_blocks(result.temperature_scaling),
        Block("figure", "Reliability diagrams", source=figures["reliability"]),
        Block("h2", "Label shift: what the adapter changed"),
        Block("figure", "Baseline prediction (rows) against adapter prediction (columns); extreme reversals outlined in red",
              source=figures["label_shift"]),
    ]
    reversals = result.extreme_reversals
    blocks.append(Block("p", f"Extreme reversals (strong_negative ↔ strong_positive between baseline and adapter): {reversals}."
                             + (" The reviews behind them:" if reversals else " None: the adapter never flipped a review "
                                "from one end of the scale to the other.")))
    base_pred, lora_pred = scored.predictions("baseline"), scored.predictions("lora")
    for index in np.flatnonzero([(int(b), int(a)) in EXTREMES for b, a in zip(base_pred, lora_pred)])[:EXAMPLES_PER_CELL * 2]:
        blocks.append(_quote(scored, index, f"true {LABEL_NAMES[scored.rows.labels[index]]}; baseline "
                                            f"{LABEL_NAMES[base_pred[index]]} → LoRA {LABEL_NAMES[lora_pred[index]]}"))
    blocks += [
        Block("h2", "What the adapter gets wrong"),
        Block("p", f"Up to {EXAMPLES_PER_CELL} real reviews from each of the {EXAMPLE_CELLS} confusion cells farthest from "
                   "the diagonal (then the fullest), the ones the adapter was surest about first; shortened."),
    ]
    confidence = scored.probabilities["lora"].max(axis=1)
    for true, predicted, members in misclassified_cells(scored):
        blocks.append(Block("p", f"true {LABEL_NAMES[true]}, predicted {LABEL_NAMES[predicted]}: {len(members)} review(s)"))
        for index in members[:EXAMPLES_PER_CELL]:
            blocks.append(_quote(scored, index, f"LoRA confidence {confidence[index]:.2f}"))
    return blocks


def cut_description(meta: AdapterMeta) -> str:
    """Which tokens of a long review the adapter reads, in words."""
    if meta.kept_head >= meta.max_length - 1:
        return f"the first {meta.max_length} tokens"
    return f"the first {meta.kept_head} and last {meta.max_length - meta.kept_head} tokens"


def long_review_blocks(split: LongReviews, meta: AdapterMeta, names: list[str], *, n: int) -> list[Block]:
    """How many test reviews were cut, and every model's scores on them and on the rest."""
    long, short = split.long, split.short
    blocks = [
        Block("h2", "Long reviews"),
        Block("p", f"{long.n} of {n} test reviews ({long.n / n:.0%}) are longer than the adapter's {split.max_length} "
                   f"tokens; the adapter and the untuned baseline read {cut_description(meta)} of each (truncation "
                   f"{split.truncation}, as in training), the classical baseline the whole text. Scores on each group "
                   "apart (macro-F1 on a small group is noisy: one class with few reviews in it moves it a lot). "
                   "predict, serve and mcp can read a long review whole with --long-text chunk."),
    ]

    def cells(group, name: str) -> list[str]:
        score = group.scores.get(name)
        return [f"{score.accuracy:.3f}", f"{score.macro_f1:.3f}"] if score else ["n/a", "n/a"]

    blocks.append(Block("table", rows=[[
        "model", f"long ({long.n}): accuracy", f"long ({long.n}): macro-F1",
        f"the rest ({short.n}): accuracy", f"the rest ({short.n}): macro-F1",
    ]] + [[MODEL_TITLES[name], *cells(long, name), *cells(short, name)] for name in names]))
    return blocks


def temperature_blocks(scaling: TemperatureScaling) -> list[Block]:
    """The adapter's temperature and its calibration error before and after it."""
    if scaling.temperature == 1:
        return [Block("p", "The adapter carries no temperature (T = 1: trained with --no-calibrate, or before "
                           f"temperatures were fitted): its probabilities are the plain softmax of its logits, ECE "
                           f"{scaling.ece_raw:.3f}.")]
    return [
        Block("p", f"The adapter's probabilities here, as from predict, serve and mcp, are softmax(logits / T) "
                   f"with T = {scaling.temperature:.3f}, fitted on the run's validation rows (yelp_lora.json). "
                   "Dividing by T changes how sure the adapter is, never which label it picks, so its other scores "
                   "are the same without it. The reliability diagrams show the adapter before and after."),
        Block("table", rows=[
            ["LoRA adapter probabilities", "temperature", "ECE"],
            ["before: softmax(logits)", "1", f"{scaling.ece_raw:.3f}"],
            ["after: softmax(logits / T)", f"{scaling.temperature:.3f}", f"{scaling.ece_calibrated:.3f}"],
        ]),
    ]


def reliability_titles(names: list[str], scaling: TemperatureScaling) -> dict[str, str]:
    """The reliability panels (calibration key -> title): each model's, and the adapter's before its
    temperature too, when it has one."""
    titles = {}
    for name in names:
        if name == "lora" and scaling.temperature != 1:
            titles[RAW] = f"{MODEL_TITLES['lora']}, before temperature scaling"
            titles[name] = f"{MODEL_TITLES['lora']}, after (T = {scaling.temperature:.2f})"
        else:
            titles[name] = MODEL_TITLES[name]
    return titles


# ---------------------------------------------------------------- the report


def _check_out_dir(out_dir: Path) -> None:
    """The output directory is replaced whole: never let that be a directory holding other things."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / REPORT_HTML).is_file())):
        raise DataError(f"--out {out_dir} exists and is not a report directory; it would be replaced whole")


class ReportRecord(CompareResult):
    """report.json: the comparison, plus the bootstrap intervals, calibration bins (each model's, and
    lora_raw: the adapter's before its temperature) and figure files."""

    bootstrap: dict[str, dict]
    calibration: dict[str, dict]
    figures: dict[str, str]


def build_report(run: str | Path, settings: EvalSettings, out_dir: str | Path | None = None) -> tuple[Path, CompareResult]:
    """Score the run's baseline, adapter (and classical baseline) on one test sample; write the report.

    Returns the report directory and the comparison (what `compare` reports for the same sample)."""
    run_dir, record = read_run(run)
    out_dir = Path(out_dir) if out_dir else run_dir / REPORT_DIRNAME
    _check_out_dir(out_dir)
    scored = score_test_sample(run_dir, settings)
    result = compare_result(scored)
    names = list(scored.probabilities)
    labels = np.asarray(scored.rows.labels)
    intervals = {
        name: bootstrap_ci(
            labels, scored.predictions(name), resamples=settings.resamples, seed=settings.seed, desc=f"Bootstrapping {name}"
        )
        for name in names
    }
    calibrations = {name: calibration(labels, scored.probabilities[name]) for name in names}
    calibrations[RAW] = calibration(labels, scored.lora_raw)
    with atomic_dir(out_dir) as staging:
        figures = {
            "training": figure_training(staging, record),
            "intervals": figure_intervals(staging, intervals, names),
            "per_class": figure_per_class(staging, result, names),
            "confusion": figure_confusion(staging, result, names),
            "error_distance": figure_error_distance(staging, scored, names),
            "reliability": figure_reliability(staging, calibrations, reliability_titles(names, result.temperature_scaling)),
            "label_shift": figure_label_shift(staging, scored),
        }
        blocks = build_blocks(
            record, run_dir, scored, result, intervals=intervals, calibrations=calibrations, figures=figures
        )
        title = blocks[0].text
        (staging / REPORT_HTML).write_text(render_html(title, blocks), encoding="utf-8")
        (staging / REPORT_MD).write_text(render_markdown(blocks), encoding="utf-8")
        numbers = ReportRecord(**dict(result), bootstrap=intervals, calibration=calibrations, figures=figures)
        (staging / REPORT_JSON).write_text(numbers.to_json(), encoding="utf-8")
    return out_dir, result
