"""Tests of scripts/reproduce.py: the rules it reports with (epsilon choice, catastrophic overfitting, Pareto front,
class split) on synthetic inputs, and the whole study end to end at a minuscule scale (offline digits, 1 epoch,
width-16 ViT): every section writes its table, plot and sentences, the report's numbers are the JSON's, and a
second invocation reuses the finished runs."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Smaller than --quick: the whole study in well under a minute on one shared core.
MINUSCULE = [
    "--quick", "--num_train_epochs", "1", "--hidden_size", "16", "--num_hidden_layers", "1",
    "--num_attention_heads", "2", "--intermediate_size", "32", "--max_train_samples", "64", "--max_eval_samples",
    "40", "--robust_eval_samples", "8", "--attack_steps", "2", "--monitor_samples", "8", "--monitor_steps", "1",
    "--soup_betas", "0", "0.5", "1", "--alphas", "0", "0.5", "1", "--transfer_steps", "2",
    "--epsilon_grid", "8/255", "16/255",
]


def _row(eps, nominal_robust, adv_clean, nominal_clean=0.9, adv_robust=0.5):
    return {"epsilon": eps, "epsilon_value": reproduce.parse_eps(eps), "nominal_clean_accuracy": nominal_clean,
            "nominal_robust_accuracy": nominal_robust, "adversarial_clean_accuracy": adv_clean,
            "adversarial_robust_accuracy": adv_robust}


def test_choose_epsilon_takes_the_largest_radius_in_the_papers_regime():
    rows = [_row("4/255", 0.15, 0.90), _row("8/255", 0.01, 0.88), _row("16/255", 0.0, 0.45)]
    # 4/255: the nominal model is not broken; 16/255: adversarial training costs half the clean accuracy.
    assert reproduce.choose_epsilon(rows)["epsilon"] == "8/255"
    rows.append(_row("12/255", 0.0, 0.85))
    assert reproduce.choose_epsilon(rows)["epsilon"] == "12/255"
    # No radius qualifies: the largest robust-accuracy gain wins, and the reason says it was a fallback.
    fallback = reproduce.choose_epsilon([_row("4/255", 0.5, 0.9, adv_robust=0.6), _row("8/255", 0.3, 0.5)])
    assert fallback["epsilon"] == "8/255" and "fallback" in fallback["reason"]


def test_catastrophic_overfitting_rule_matches_the_library_detector():
    history = [{"epoch": e, "eval_robust_accuracy": v} for e, v in enumerate([0.1, 0.3, 0.4, 0.35, 0.1, 0.05], 1)]
    co = reproduce.catastrophic_overfitting(history)
    assert co["detected"] and co["epoch"] == 5 and co["best_before"] == 0.4 and co["after"] == 0.1
    assert co["final"] == 0.05
    assert not co["transient"]
    # A drop that is regained (here early, near chance level) is transient, not catastrophic overfitting.
    early = [{"epoch": e, "eval_robust_accuracy": v} for e, v in enumerate([0.12, 0.04, 0.5, 0.6], 1)]
    co = reproduce.catastrophic_overfitting(early)
    assert co["transient"] and not co["detected"] and co["epoch"] == 2
    assert reproduce._co_text(co).startswith("no (transient drop at epoch 2")
    steady = [{"epoch": e, "eval_robust_accuracy": v} for e, v in enumerate([0.1, 0.3, 0.25, 0.3], 1)]
    assert not reproduce.catastrophic_overfitting(steady)["detected"]
    # Below min_best (0.05) nothing counts as a collapse; without monitoring nothing is claimed.
    assert not reproduce.catastrophic_overfitting([{"eval_robust_accuracy": 0.04}, {"eval_robust_accuracy": 0.0}])[
        "detected"]
    assert not reproduce.catastrophic_overfitting([{"loss": 1.0}])["monitored"]


def test_pareto_front():
    points = {0.0: (0.80, 0.60), 0.4: (0.90, 0.55), 0.8: (0.88, 0.40), 1.0: (0.91, 0.0)}
    assert reproduce.pareto_front(points) == [0.0, 0.4, 1.0]


def test_class_subset_relabels_with_the_original_names():
    from hf_advsoup.data import load_digits_dataset

    data = load_digits_dataset()
    second = reproduce.class_subset(data, [5, 6, 7, 8, 9])
    assert second["train"].features["label"].names == ["5", "6", "7", "8", "9"]
    assert set(second["validation"]["label"]) == {0, 1, 2, 3, 4}
    assert len(second["train"]) == sum(1 for y in data["train"]["label"] if y >= 5)


def test_unknown_section_is_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid sections: epsilon, table1"):
        reproduce.ReproduceArguments(sections=["table7"])


def test_minuscule_study_end_to_end_writes_the_report_from_the_numbers(tmp_path):
    out, work = tmp_path / "card", tmp_path / "work"
    results = reproduce.main(["--output_dir", str(out), "--work_dir", str(work), *MINUSCULE])

    assert set(results["sections"]) == set(reproduce.SECTIONS)
    readme = (out / "README.md").read_text()
    for heading in ("## Choosing epsilon", "## Table 1 in small", "## Table 9 / Figure 4 in small",
                    "## Table 2 in small", "## Figure 3 in small", "## Table 6 in small", "## What we see vs. the paper"):
        assert heading in readme
    for png in ("tradeoff.png", "accuracy_vs_beta.png", "alpha_sweep.png", "training_attacks.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in readme
    assert readme.startswith("---\n") and "model-index" in readme  # the card's measured soups

    saved = json.loads((out / "results.json").read_text())
    eps = saved["epsilon"]
    assert eps in ("8/255", "16/255") and f"l_inf {eps}" in readme
    # Table 1: seven setups, each row's accuracies printed from the JSON; robust accuracy is on 8 images.
    rows = saved["sections"]["table1"]["rows"]
    assert len(rows) == 7 and {r["adapter"] for r in rows} == {"none", *reproduce.ADAPTERS}
    for r in rows:
        assert f"`{r['run']}` | {r['extra_parameters']} | {reproduce.pct(r['clean_accuracy'])} | " \
               f"{reproduce.pct(r['robust_accuracy'])} |" in readme
        assert round(r["robust_accuracy"] * 8) == pytest.approx(r["robust_accuracy"] * 8)
    token = next(r for r in rows if r["adapter"] == "cls_token")
    assert token["extra_parameters"] == 16  # one more classification token of width 16
    # The narrative is built from the same numbers.
    assert reproduce.pct(token["clean_accuracy"]) in " ".join(saved["observations"]["table1"])
    # Soups: all three families at each beta; at beta=1 the two-network soup is exactly the nominal network.
    curves = saved["sections"]["soups"]["curves"]
    nominal = next(r for r in rows if r["alpha"] == 1.0)
    assert curves["independent_soup"]["clean"]["1.0"] == pytest.approx(nominal["clean_accuracy"])
    assert set(curves["soup"]["robust"]) == {"0.0", "0.5", "1.0"}
    # Table 2: six training attacks, each with its effective step relative to eps.
    steps = {(r["preset"], round(r["step_over_eps"], 3)) for r in saved["sections"]["table2"]["rows"]}
    assert steps == {("pgd2", 0.625), ("pgd5", 0.25), ("fast_at", 1.0), ("nfgsm", 0.75), ("fast_at", 1.25),
                     ("nfgsm", 1.0)}
    # Transfer: 2 strategies x 4 columns on the five classes of the second half.
    transfer = saved["sections"]["transfer"]
    assert transfer["target_classes"] == [5, 6, 7, 8, 9] and len(transfer["cells"]) == 8
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in transfer["cells"])

    # --report_only renders the same card from results.json alone (no run, no evaluation).
    first = (out / "README.md").read_text()
    (out / "README.md").unlink()
    reproduce.main(["--report_only", "--output_dir", str(out)])
    again_text = (out / "README.md").read_text()
    assert "rendered again from `results.json`" in again_text
    # Everything else is the same card.
    assert [line for line in again_text.splitlines() if not line.startswith("| report |")] == first.splitlines()

    # A second invocation reuses every finished run (no training) and says so in the report.
    again = reproduce.main(["--output_dir", str(out), "--work_dir", str(work), *MINUSCULE, "--sections", "table1",
                            "--epsilon", eps])
    assert all(r["reused"] for r in again["runs"].values()) and len(again["runs"]) == 7
    assert "reused from an earlier invocation" in (out / "README.md").read_text()
