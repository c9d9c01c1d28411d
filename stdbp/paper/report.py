"""``report.md`` of ``stdbp reproduce``: the paper's numbers and figures beside ours, with the commands behind them.

:func:`render_report` turns the content of ``reproduce.json`` into Markdown; figure links are
relative to the output directory, where the report lives.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_report"]


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _header(summary: dict[str, Any]) -> list[str]:
    env = summary["environment"]
    budget = summary["budget"]
    lines = [
        "# Reproducing Zhang et al., *Spike-Timing-Dependent Back Propagation in Deep Spiking Neural Networks*",
        "",
    ]
    if summary["quick"]:
        lines += [
            "> **Quick run.** Every network was trained for "
            f"{budget['epochs']} epoch(s) on the first {budget['train_limit']} training images, Fig. 5 analyses the first "
            f"{budget['analyze_limit'] or 'all'} test images and the Section 2 comparison trains {budget['compare_epochs']} epoch(s) "
            f"on {budget['compare_train_limit'] or 'all'} images. This checks that every step runs; **its numbers are not the "
            "paper's and are not meant to be.** Run `stdbp reproduce` (without `--quick`) for the real comparison.",
            "",
        ]
    if summary.get("reduced_budget"):
        lines += [
            "> **Reduced budget** (set through the Python API or the testing option `--budget`): "
            + ", ".join(f"{k} = {v}" for k, v in budget.items())
            + ". Its numbers are not the paper's.",
            "",
        ]
    command = "stdbp reproduce" + (" --quick" if summary["quick"] else "") + f" --out {summary['out']}"
    for flag, key in (("--pretrained", "pretrained_dir"), ("--data-dir", "data_dir")):
        command += f" {flag} {summary[key]}" if summary.get(key) else ""
    lines += [
        f"Produced by `{command}` on {env['date']}: stdbp {env['stdbp']}, PyTorch {env['torch']}, Python {env['python']}, "
        f"{env['machine']}, {env['cpus']} CPUs ({env['torch_threads']} PyTorch threads); {summary['wall_seconds']:.0f} s in all. "
        "Each number comes with the command that produces it on its own; `reproduce.json` holds them all.",
        "",
    ]
    return lines


def _table1(summary: dict[str, Any]) -> list[str]:
    paper = summary["paper"]["table1"]
    lines = [
        "## Table 1: MNIST test accuracy",
        "",
        "| Architecture | Paper (STDBP) | stdbp | Network | Command |",
        "|---|---|---|---|---|",
    ]
    for row in summary["table1"]:
        if row["source"] == "pretrained":
            source = f"pretrained `{row['checkpoint']}`, evaluated"
        else:
            source = f"trained here, {row['epochs']} epoch(s)"
        lines.append(
            f"| {row['arch']} | {paper[row['arch']]:.1f} % | {_pct(row['accuracy'])} | {source} | `{row['command']}` |"
        )
    lines += [
        "",
        "Accuracy is the share of the test images whose first output spike is the right class (a tie goes to the lowest class, "
        "no output spike counts as wrong). The paper's text also quotes 98.4 % for 784-400-10 in one sentence; its Table 1 says 98.1 %.",
        "",
    ]
    return lines


def _fig5(summary: dict[str, Any]) -> list[str]:
    paper = summary["paper"]["fig5"]
    archs = list(summary["fig5"])
    results = [summary["fig5"][a] for a in archs]
    lines = [
        "## Fig. 5: spike times, sparsity and cost of the fully connected networks",
        "",
        "Each test image is simulated event by event (`stdbp.sim.events`, float64). The simulation runs until no event is left: "
        'every neuron that will ever fire has fired. "Before the decision" means strictly before the first output spike.',
        "",
        "| | Paper, 784-400-10 | " + " | ".join(f"stdbp, {a}" for a in archs) + " |",
        "|---|---|" + "---|" * len(archs),
    ]

    def row(label: str, paper_value: str, values: list[str]) -> None:
        lines.append(f"| {label} | {paper_value or '-'} | " + " | ".join(values) + " |")

    p400 = paper.get("784-400-10", {})
    row("test images", "10000", [str(r["n_images"]) for r in results])
    row(
        "hidden neurons that fired before the decision, share of all hidden neurons",
        f"{p400.get('hidden_fired_before_decision', 'n/a')} %",
        [_pct(r["hidden_fired_before_decision_fraction"], 1) for r in results],
    )
    row(
        "the same, as a share of the hidden neurons that fire at all",
        "(the other reading of the paper's 48.6 %)",
        [_pct(r["hidden_fired_before_decision_share_of_fired"], 1) for r in results],
    )
    row(
        "hidden neurons that fire at all (unbounded window)",
        f"{p400.get('hidden_fired', 'n/a')} %",
        [_pct(r["hidden_fired_fraction"], 1) for r in results],
    )
    for k in ("2", "10"):
        row(
            f"hidden neurons that fire by t = {k} t_max",
            "",
            [_pct(r["hidden_fired_fraction_by_time"].get(k), 1) for r in results],
        )
    row("mean decision time (input coded in [0, t_max = 1])", "", [_num(r["decision_time_mean"]) for r in results])
    row(
        "median time of the last spike (end of the simulation)",
        "",
        [_num(r["last_spike_time"]["p50"], ".1f") for r in results],
    )
    row("SynOps per image up to the decision", "", [f"{r['synops_per_image']:,.0f}" for r in results])
    row("SynOps per image, whole simulation", "", [f"{r['synops_per_image_total']:,.0f}" for r in results])
    row("MACs per image of the same-shape dense network", "", [f"{r['dense_macs_per_image']:,}" for r in results])
    row("SynOps up to the decision / dense MACs", "", [_pct(r["synops_to_dense_ratio"], 1) for r in results])
    row("accuracy, deciding at the first output spike", "", [_pct(r["accuracy"]) for r in results])
    lines += [
        "",
        "The paper reports 48.6 % and 66.3 % for 784-400-10 only and does not say where its simulation window ends; the share that "
        'fires "at all" depends on it (rows "by t = k t_max"), because a ReL-PSP neuron whose potential still rises after its '
        "last input fires eventually, however late. SynOps count one per spike and outgoing weighted synapse, whether or not "
        "the target has fired; the definitions are in each `analysis.json`.",
        "",
    ]
    for arch, result in zip(archs, results):
        lines += [f"**{arch}**: `{result['command']}`", "", f"![Fig. 5, {arch}](fig5/{arch}/fig5.png)", ""]
    return lines


def _section2(summary: dict[str, Any]) -> list[str]:
    section = summary["section2"]
    final = section["final"]
    kernels = [k for k in ("relpsp", "alpha") if k in final]
    names = {"relpsp": "ReL-PSP (STDBP)", "alpha": "alpha-PSP (SpikeProp)"}
    config = section["config"]
    lines = [
        "## Section 2: ReL-PSP against alpha-PSP neurons",
        "",
        "The paper argues qualitatively (Sections 2 and 3.1, Figs. 2-3) that alpha-PSP neurons trained by SpikeProp suffer from "
        "exploding gradients (`dt/dV = -1/V'(t)` with `V'` near 0) and dead neurons, and that ReL-PSP cures both; it gives no "
        f"numbers. Ours: {config['arch']}, the same initial weights, batches and optimiser for both, {config['epochs']} epoch(s)"
        f" on {config['train_limit'] or 'all 60000'} training images.",
        "",
        "| after the last epoch | " + " | ".join(names[k] for k in kernels) + " |",
        "|---|" + "---|" * len(kernels),
    ]
    rows = [
        ("test accuracy", lambda r: _pct(r["test_accuracy"])),
        ("dead hidden neurons (silent on every held-out image)", lambda r: _pct(r["dead_share"], 1)),
        (
            "\\|dt/dV\\| of hidden spikes, p99 / max",
            lambda r: f"{_num(r['dtdv']['p99'], '.3g')} / {_num(r['dtdv']['max'], '.3g')}",
        ),
        ("gradient norm per step, max over the last epoch", lambda r: _num(r.get("grad_norm", {}).get("max"), ".3g")),
        ("steps with a NaN/inf loss or gradient", lambda r: str(r.get("nonfinite_steps_total", "n/a"))),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(final[k]) for k in kernels) + " |")
    lines += ["", f"`{section['command']}`", ""]
    for figure in section["figures"]:
        lines += [f"![{figure}](compare_psp/{figure})", ""]
    return lines


def render_report(summary: dict[str, Any]) -> str:
    """The Markdown report for the content of ``reproduce.json``."""
    lines = _header(summary) + _table1(summary) + _fig5(summary) + _section2(summary)
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {seconds:.0f} |" for step, seconds in summary["seconds"].items()]
    return "\n".join(lines) + "\n"
