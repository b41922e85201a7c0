"""benchmarks/recipes.py's verdict, the issue's check for the recommended recipe, read from run directories.

The runs here are written by hand (a config, a finished status, a summary with the scores the criterion reads),
so each case states its accuracies and the verdict they must give: training is tested elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "recommended-minilm.yaml"
PUBLISHED = ROOT / "configs" / "recipes" / "long4-published-qv-r8-bias-all.yaml"


@pytest.fixture(scope="module")
def recipes():
    return load_benchmark("recipes")


def _run(out: Path, recipe: Path, folder: str, seed: int, accuracy: float, precision: str) -> None:
    from lorabudget.config import load_config

    run = out / folder / f"seed-{seed}"
    run.mkdir(parents=True)
    cfg = load_config(recipe, [f"seed={seed}", "data.source=/data/train_subset.csv.gz"])
    (run / "config.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    (run / "summary.json").write_text(json.dumps({
        "finished": True, "best": {"accuracy": accuracy, "step": 2300}, "total_steps": 2300, "trainable_params": 1,
        "train_seconds": 60.0, "encoder_layers": 6, "precision": precision}))


def _study(out: Path, mine: list[float], theirs: list[float], precision: str = "bf16", suffix: str = "") -> None:
    for seed, acc in enumerate(mine, 1):
        _run(out, PRESET, f"recommended{suffix}", seed, acc, precision)
    for seed, acc in enumerate(theirs, 1):
        _run(out, PUBLISHED, f"long4-published{suffix}", seed, acc, precision)


def test_met_when_the_margin_beats_twice_the_larger_spread(recipes, tmp_path):
    # means 0.925 and 0.915 (a margin of 1.00 point); sample stds 0.10 and 0.30 points: needed > 0.60
    _study(tmp_path, [0.924, 0.925, 0.926], [0.912, 0.915, 0.918])
    verdict = recipes.criterion(tmp_path, PRESET)
    assert "margin 1.00 points, needed > 0.60: met" in verdict
    assert "at the same length: met against 1 of 1 published recipes: the criterion holds" in verdict


def test_not_met_when_the_spread_is_wider_than_half_the_margin(recipes, tmp_path):
    # the same means, the published spread 0.60 points: needed > 1.20
    _study(tmp_path, [0.924, 0.925, 0.926], [0.909, 0.915, 0.921])
    verdict = recipes.criterion(tmp_path, PRESET)
    assert "margin 1.00 points, needed > 1.20: NOT met" in verdict
    assert "the criterion does NOT hold" in verdict


def test_runs_in_another_precision_are_another_comparison(recipes, tmp_path):
    """An `auto` preset trains in bf16 on one machine and fp32 on another: those runs are not seeds of one group,
    and each precision's recommended runs face the published runs of their own precision only."""
    _study(tmp_path, [0.924, 0.925, 0.926], [0.912, 0.915, 0.918], "bf16", "-a")
    _study(tmp_path, [0.900, 0.901, 0.902], [0.912, 0.915, 0.918], "fp32", "-b")
    assert sorted(len(runs) for _, _, runs in recipes.finished_groups(tmp_path)) == [3, 3, 3, 3]
    verdict = recipes.criterion(tmp_path, PRESET)
    blocks = verdict.split("recommended-minilm.yaml (")[1:]
    assert len(blocks) == 2
    by_precision = {block.split(", ")[2].split(")")[0]: block for block in blocks}
    assert "the criterion holds" in by_precision["bf16"] and "long4-published-a" in by_precision["bf16"]
    assert "long4-published-b" not in by_precision["bf16"]
    assert "the criterion does NOT hold" in by_precision["fp32"] and "long4-published-b" in by_precision["fp32"]


def test_the_results_file_keeps_each_run_once_and_draws_them(recipes, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "round.json"
    _study(out, [0.92, 0.93], [0.90])
    for run in out.glob("*/seed-*"):
        (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val_accuracy": 0.8}) + "\n")
    data = recipes.record(results, out)
    assert sorted(data["runs"]) == ["long4-published/seed-1", "recommended/seed-1", "recommended/seed-2"]
    (out / "recommended" / "seed-1" / "summary.json").write_text("{}")  # a run already kept is not read again
    assert recipes.record(results, out) == data
    table = recipes.results_table(data)
    assert table.index("| recommended | 1 | 2 | 92.50 ± 0.71") < table.index("| long4-published | 1 | 1 | 90.00")
    picture = recipes.results_figure(data, tmp_path / "fig" / "round.png", control="long4-published", goal=1.0)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(picture.parent.glob(".*tmp*"))


def _results(control: list[float], recipe: dict[int, float]) -> dict:
    runs = {f"control/seed-{seed}": {"recipe": "control", "seed": seed, "validation": acc, "trainable": 1,
                                     "train_seconds": 60.0} for seed, acc in enumerate(control, 1)}
    runs |= {f"lever/seed-{seed}": {"recipe": "lever", "seed": seed, "validation": acc, "trainable": 1,
                                    "train_seconds": 60.0} for seed, acc in recipe.items()}
    return {"runs": runs}


def test_a_lever_is_compared_with_the_control_seed_by_seed(recipes):
    """Differences of +0.5, +0.6, +0.4 points on seeds 1-3 are beyond the noise; a seed the control lacks is
    left out of the pairs; the same mean with differences of +1.5, -0.9, +0.9 is not."""
    data = _results([0.920, 0.918, 0.924], {1: 0.925, 2: 0.924, 3: 0.928, 4: 0.990})
    by_recipe = recipes.runs_by_recipe(data)
    mean, se, p, n = recipes.paired_against(by_recipe["lever"], by_recipe["control"])
    assert n == 3 and mean == pytest.approx(0.5) and se == pytest.approx(0.1 / 3 ** 0.5)
    assert p < 0.01
    table = recipes.results_table(data, "control")
    assert "| lever | 1 | 4 |" in table and "+0.50 ± 0.06, p 0.00" in table and "(3 seeds): beyond the noise" in table
    assert "| control | 1 | 3 | 92.07 ± 0.31 | 1.0 | (the control) |" in table
    noisy = _results([0.920, 0.918, 0.924], {1: 0.935, 2: 0.909, 3: 0.933})
    assert "+0.50 ± 0.72, p 0.28" in recipes.results_table(noisy, "control")
    assert "(3 seeds): within the noise" in recipes.results_table(noisy, "control")
    two_seeds = _results([0.920, 0.918, 0.924], {1: 0.935, 2: 0.930})
    assert "+1.35 (2 seeds): too few seeds" in recipes.results_table(two_seeds, "control")
    assert "against the control" not in recipes.results_table(data)  # no control, no column


def test_the_control_needs_the_results_file(recipes, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipes.main(["--control", "round2-baseline"])
    assert exit_.value.code == 2 and "--control compares the runs of --results" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the goal is a line above the control in the figure
        recipes.main(["--results", "round.json", "--control", "round2-baseline", "--goal", "1.0"])
    assert exit_.value.code == 2 and "--goal draws a line above the control" in capsys.readouterr().err
