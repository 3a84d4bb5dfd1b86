"""Tests of the reproduction study (hf_advsoup.study, scripts/reproduce.py): its rules on synthetic numbers (epsilon
and alpha choice on validation, the seed-noise rule, the collapse rule shared with the trainer, the Pareto front,
the class split), the job scheduler (parallel processes, dependencies, reuse), and the whole study end to end at a
minuscule scale through the package entry point: every section writes its table, plot and verdicts, reported
numbers come from the test split and equal the JSON, second seeds go exactly where a compared difference is under
the threshold, the card is rendered again from results.json alone, and a second invocation reuses every job."""

import dataclasses
import json
from fractions import Fraction
import os
import random
import sys
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from hf_advsoup.catastrophic_overfitting import find_collapse
from hf_advsoup.intervals import unpack_flags
from hf_advsoup.study import ModelShape, StudyArguments, get_study_preset, run_study
from hf_advsoup.study import jobs as study_jobs
from hf_advsoup.study import report, tasks
from hf_advsoup.study.data import class_subset
from hf_advsoup.study.presets import TrainingAttack
from hf_advsoup.study.rules import choose_alpha, choose_epsilon, pareto_front, seeds_to_resolve
from hf_advsoup.study.sections import SECTIONS
from hf_advsoup.trainer import CatastrophicOverfittingCallback

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def minuscule_preset(**changes):
    """Smaller than --quick: the whole study in about a minute on one shared core."""
    base = get_study_preset("digits", quick=True)
    values = dict(
        name="digits-minuscule",
        model=ModelShape(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        recipe=dataclasses.replace(base.recipe, num_train_epochs=1), train_samples=64, validation_samples=40,
        validation_robust_samples=8, test_samples=40, test_robust_samples=8, report_attack_steps=2, monitor_samples=8,
        monitor_steps=1, soup_robust_samples=8, transfer_steps=2, transfer_strategies=("all",), long_horizon_epochs=2,
        epsilon_grid=("8/255", "16/255"),
        training_attacks=(TrainingAttack("PGD-2 (the default)", "pgd2"), TrainingAttack("PGD-5", "pgd5"),
                          TrainingAttack("FAST-AT, Wong et al.'s recommended step", "fast_at", 1.25)),
    )
    values.update(changes)
    return dataclasses.replace(base, **values)


# ----------------------------------------------------------------------------------------------- rules
def _row(eps, nominal_robust, adv_clean, nominal_clean=0.9, adv_robust=0.5):
    from hf_advsoup.attacks import parse_epsilon

    return {"epsilon": eps, "epsilon_value": float(parse_epsilon(eps)), "nominal_clean_accuracy": nominal_clean,
            "nominal_robust_accuracy": nominal_robust, "adversarial_clean_accuracy": adv_clean,
            "adversarial_robust_accuracy": adv_robust}


def test_choose_epsilon_takes_the_largest_radius_in_the_papers_regime():
    rows = [_row("4/255", 0.15, 0.90), _row("8/255", 0.01, 0.88), _row("16/255", 0.0, 0.45)]
    # 4/255: the nominal model is not broken; 16/255: adversarial training costs half the clean accuracy.
    assert choose_epsilon(rows)["epsilon"] == "8/255"
    rows.append(_row("12/255", 0.0, 0.85))
    assert choose_epsilon(rows)["epsilon"] == "12/255"
    assert choose_epsilon(rows, min_clean_ratio=0.95)["epsilon"] != "12/255"  # the preset's ratio is used
    fallback = choose_epsilon([_row("4/255", 0.5, 0.9, adv_robust=0.6), _row("8/255", 0.3, 0.5)])
    assert fallback["epsilon"] == "8/255" and "fallback" in fallback["reason"]


def test_choose_alpha_and_pareto_front():
    rows = [{"alpha": 0.0, "clean_accuracy": 0.70, "robust_accuracy": 0.60},
            {"alpha": 0.4, "clean_accuracy": 0.80, "robust_accuracy": 0.55},
            {"alpha": 0.8, "clean_accuracy": 0.84, "robust_accuracy": 0.40},
            {"alpha": 1.0, "clean_accuracy": 0.90, "robust_accuracy": 0.00}]
    assert choose_alpha(rows)["alpha"] == 0.4  # the best mean among 0 < alpha < 1: endpoints are not candidates
    with pytest.raises(ValueError, match="co-trained run"):
        choose_alpha([rows[0], rows[-1]])
    points = {0.0: (0.80, 0.60), 0.4: (0.90, 0.55), 0.8: (0.88, 0.40), 1.0: (0.91, 0.0)}
    assert pareto_front(points) == [0.0, 0.4, 1.0]


def test_claims_are_decided_by_paired_intervals_of_counts():
    """The -4.0 case that float32 accuracies decided wrongly is exact and unresolved; more seeds are asked for only
    where they can resolve a claim; the card's text carries the interval, the images and the seeds."""
    from fractions import Fraction

    import numpy as np

    from hf_advsoup.intervals import decide, paired_difference

    a = np.zeros(500, dtype=bool)
    a[:236] = True
    b = np.zeros(500, dtype=bool)
    b[:256] = True
    d = paired_difference(a, b)
    assert d.difference == Fraction(-1, 25) and decide(d, "-1/25", "at least") == "unresolved"
    assert seeds_to_resolve(d, "-1/25", "at least", seeds=1, max_seeds=3) is None  # on the boundary: never
    # +1 point with a half-width just over 1 point: a second seed (twice the images) resolves it
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.5
    better = base.copy()
    better[np.flatnonzero(~base)[:110]] = True
    better[np.flatnonzero(base)[:90]] = False  # 200 discordant images, +20 net: +1 point
    d = paired_difference(better, base)
    assert decide(d, 0, "above") == "unresolved"
    assert seeds_to_resolve(d, 0, "above", seeds=1, max_seeds=3) in (2, 3)
    assert seeds_to_resolve(d, 0, "above", seeds=1, max_seeds=1) is None
    resolved = paired_difference(_n_right(1000, 2000), _n_right(800, 2000))
    assert seeds_to_resolve(resolved, 0, "above", seeds=1, max_seeds=3) is None  # already reproduced
    c = {"difference_exact": "-1/25", "interval_95_exact": ["-29/500", "-3/250"], "num_examples": 500, "num_seeds": 2,
         "direction": "at least", "boundary": -0.04, "boundary_exact": "-1/25", "verdict": "unresolved",
         "seeds_to_resolve": None, "images_to_resolve": None}
    assert report.difference_text(c) == "-4.0 points [-5.8, -1.2] (500 images x 2 seeds)"
    assert report.boundary_text(c) == "difference ≥ -4.0 points"
    assert "no number of images" in report.needs_text(c, 3)
    assert report.combine(["reproduced", "unresolved"]) == "unresolved"
    assert report.combine(["reproduced", "not reproduced", "unresolved"]) == "not reproduced"
    stat = {"interval_95": [0.01, 0.049]}
    assert report.single_number_verdict(stat, "1/20", "at most") == "reproduced"
    assert report.single_number_verdict({"interval_95": [0.03, 0.07]}, "1/20", "at most") == "unresolved"


def _n_right(correct, total):
    import numpy as np

    flags = np.zeros(total, dtype=bool)
    flags[:correct] = True
    return flags


def test_collapse_rule_is_the_trainers():
    """The study judges a logged run with the function the trainer's detector calls, so both find the same
    collapse (or none) on any series, the chance-level threshold included."""
    rng = random.Random(0)
    args = type("Args", (), {"output_dir": "unused"})()
    for trial in range(200):
        num_labels = rng.choice([None, 2, 10, 100])
        series = [round(rng.random() * rng.choice([0.3, 1.0]), 3) for _ in range(rng.randint(1, 8))]
        callback = CatastrophicOverfittingCallback(drop=0.5, min_best=0.05, num_labels=num_labels)
        state = TrainerState()
        for step, value in enumerate(series, 1):
            state.global_step = step
            callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_robust_accuracy": value})
        found = find_collapse(series, drop=0.5, min_best=0.05, num_labels=num_labels)
        assert (found.index + 1 if found else None) == callback.collapsed_at_step, (series, num_labels)
    # Ten classes: a dip near chance (12.5% -> 4%) is no collapse; the same run falling from 80% is.
    assert find_collapse([0.125, 0.04, 0.6, 0.8], num_labels=10) is None
    assert find_collapse([0.125, 0.04, 0.6, 0.8, 0.1], num_labels=10).index == 4


def test_class_subset_relabels_with_the_original_names():
    from hf_advsoup.data import load_digits_dataset

    data = load_digits_dataset()
    second = class_subset(data, [5, 6, 7, 8, 9])
    assert second["train"].features["label"].names == ["5", "6", "7", "8", "9"]
    assert set(second["validation"]["label"]) == {0, 1, 2, 3, 4}
    assert len(second["train"]) == sum(1 for y in data["train"]["label"] if y >= 5)
    with pytest.raises(ValueError, match="do not exist"):
        class_subset(data, [9, 10])


def test_arguments_and_presets_reject_bad_input():
    with pytest.raises(ValueError, match="valid sections: epsilon, table1"):
        StudyArguments(sections=["table7"])
    with pytest.raises(ValueError, match="study presets: fashion_mnist, digits"):
        StudyArguments(dataset="cifar10")
    with pytest.raises(ValueError, match="4/255"):
        StudyArguments(epsilon="4")
    with pytest.raises(ValueError, match="report_attacks must name attack presets"):
        dataclasses.replace(get_study_preset("fashion_mnist"), report_attacks=("pgd400",))
    with pytest.raises(ValueError, match="disjoint"):
        dataclasses.replace(get_study_preset("digits"), transfer_target_classes=(4, 5))
    with pytest.raises(ValueError, match="Unknown study preset"):
        get_study_preset("mnist")
    quick = get_study_preset("fashion_mnist", quick=True)
    full = get_study_preset("fashion_mnist")
    assert quick.train_samples < full.train_samples and quick.recipe.num_train_epochs < full.recipe.num_train_epochs
    assert full.default_epsilon == "0.1" and "0.1" in full.epsilon_grid and full.report_attacks == ("report",)


# ----------------------------------------------------------------------------------------------- scheduler
def test_run_jobs_in_parallel_after_dependencies_and_reuses_finished_jobs(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from study_sleep_task import sleepy_task

    def job(name, value, deps=(), seconds=1.0):
        return study_jobs.Job(name, "sleep", {"seconds": seconds, "value": value}, str(tmp_path / name), deps)

    jobs = [job("a", 1), job("b", 2, deps=("a",), seconds=0.1), job("c", 3)]
    run = dict(log_dir=tmp_path / "logs", execute=sleepy_task)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = study_jobs.run_jobs(jobs, workers=2, pool=pool, **run)
        a, b, c = (records[n]["result"] for n in "abc")
        assert a["pid"] != os.getpid()  # separate processes
        assert a["start"] < c["end"] and c["start"] < a["end"]  # a and c ran at the same time
        assert b["start"] >= a["end"]  # b waited for its dependency
        assert not any(r["reused"] for r in records.values())
        # Nothing changed: everything is reused. A changed input reruns that job and the jobs after it, only.
        again = study_jobs.run_jobs(jobs, workers=2, pool=pool, **run)
    assert all(r["reused"] for r in again.values())
    changed = [job("a", 10), job("b", 2, deps=("a",), seconds=0.1), job("c", 3)]
    third = study_jobs.run_jobs(changed, workers=1, **run)
    assert {n: r["reused"] for n, r in third.items()} == {"a": False, "b": False, "c": True}
    with pytest.raises(ValueError, match="not among the jobs"):
        study_jobs.run_jobs([job("d", 4, deps=("missing",))], workers=1, log_dir=tmp_path / "logs")


def test_a_failing_job_names_its_log(tmp_path):
    bad = study_jobs.Job("train/bad", "train", {"cotrain_script": str(ROOT / "scripts" / "cotrain.py"),
                                                "argv": ["--output_dir", str(tmp_path / "bad"), "--alpha", "2"]},
                         str(tmp_path / "bad"))
    with pytest.raises(study_jobs.JobError, match="train/bad failed") as error:
        study_jobs.run_jobs([bad], workers=1, log_dir=tmp_path / "logs")
    assert "train__bad.log" in str(error.value) and "alpha" in str(error.value)


# ----------------------------------------------------------------------------------------------- end to end
def test_minuscule_study_end_to_end(tmp_path, monkeypatch):
    # An extra setting of the co-trained model beside the soups (the extension point for e.g. beta="auto").
    monkeypatch.setitem(tasks.SOUP_POINTS, "half", lambda model, data_path, seed: {"beta": 0.5})
    preset = minuscule_preset(soup_extra_points=("half",))
    out, work = tmp_path / "card", tmp_path / "work"
    args = StudyArguments(dataset="digits", output_dir=str(out), work_dir=str(work), jobs=1, max_seeds=2,
                          sections=list(SECTIONS))
    results = run_study(args, preset)

    S = results["sections"]
    assert list(S) == list(SECTIONS)
    readme = (out / "README.md").read_text()
    for heading in ("## Choosing epsilon", "## Table 1", "## The Table 5 claim", "## Table 9 / Figure 4",
                    "## Table 2", "## Figure 3", "## Table 6", "## Long runs", "## The paper's claims, here"):
        assert heading in readme
    for png in ("tradeoff.png", "accuracy_vs_beta.png", "alpha_sweep.png", "table2_training_curves.png",
                "long_horizon_curves.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC and f"]({png})" in readme
    assert readme.startswith("---\n") and "model-index" in readme and "split: test" in readme
    assert "**attack of record**" in readme and "`pgd40`" in readme and "wall time | **" in readme
    saved = json.loads((out / "results.json").read_text())
    assert saved["sections"] == json.loads(json.dumps(S))

    # Protocol: the epsilon and the alpha are chosen on validation; every reported number is a test evaluation.
    E = S["epsilon"]
    assert E["choice"]["epsilon"] == choose_epsilon(E["validation"], preset.epsilon_max_nominal_robust,
                                                    preset.epsilon_min_clean_ratio)["epsilon"] == results["epsilon"]
    assert S["alpha"]["choice"]["alpha"] == choose_alpha(S["alpha"]["validation"])["alpha"]
    eps_slug = results["epsilon"].replace("/255", "")
    for r in S["table1"]["rows"]:
        correct = total = 0
        for seed, value in r["clean_accuracy"]["by_seed"].items():
            record = json.loads((work / "evals" / f"{r['run']}_s{seed}" / f"test_eps{eps_slug}" / "job.json").read_text())
            assert record["spec"]["split"] == "test" and record["spec"]["clean_samples"] == preset.test_samples
            flags = unpack_flags(record["result"]["outcomes"]["clean"])
            assert value == flags.sum() / flags.size == record["result"]["clean_accuracy_clean_mode"]
            robust = unpack_flags(record["result"]["outcomes"]["robust"])
            assert r["robust_accuracy"]["by_seed"][seed] == robust.sum() / robust.size
            correct, total = correct + int(flags.sum()), total + flags.size
        # every number is a count of images, pooled over the seeds; the card prints the JSON's numbers
        assert (r["clean_accuracy"]["correct"], r["clean_accuracy"]["total"]) == (correct, total)
        assert (f"`{r['run']}` | {r['extra_parameters']} | {report.cell(r['clean_accuracy'])} | "
                f"{report.interval_cell(r['robust_accuracy'])} |") in readme
    token = next(r for r in S["table1"]["rows"] if r["adapter"] == "cls_token")
    assert token["extra_parameters"] == 16  # one more classification token of width 16
    assert "test: validation" in readme and "carve-out" in readme  # digits: its validation split is the test split

    # Comparisons: paired intervals of the stored outcomes; more seeds only for unresolved claims that they can
    # resolve, never beyond max_seeds; every claim row states its boundary and its interval.
    comparisons = [c for section in S.values() for c in section.get("comparisons", [])]
    assert comparisons and all(c["num_seeds"] <= 2 for c in comparisons)
    for c in comparisons:
        assert Fraction(c["interval_95_exact"][0]) <= Fraction(c["difference_exact"]) <= Fraction(
            c["interval_95_exact"][1])
        if c["num_seeds"] == 2:
            assert c["claim"]
    assert "| section | paper's claim | tested as | here: difference [95% interval] | verdict | would need |" in readme
    # Catastrophic overfitting on the card is the detector's rule applied to the logged history.
    for r in S["table2"]["rows"]:
        for seed, co in r["collapse"].items():
            series = [h["eval_robust_accuracy"] for h in results["runs"][f"{r['run']}_s{seed}"]["history"]
                      if "eval_robust_accuracy" in h]
            assert co["detected"] == (find_collapse(series, num_labels=10) is not None)
    # Soups: the three families at each beta; the extra point equals the soup at beta 0.5 (same model, same data).
    rows = {r["beta"]: r for r in S["soups"]["rows"]}
    assert set(rows) == {0.0, 0.5, 1.0}
    assert S["soups"]["extra_points"]["half"]["clean_accuracy"] == pytest.approx(
        rows[0.5]["soup"]["clean"]["by_seed"]["0"])
    assert "| half (seed 0) |" in readme
    # Transfer: 4 columns (fine-tuning all weights) on the five classes of the second half.
    assert S["transfer"]["target_classes"] == [5, 6, 7, 8, 9] and len(S["transfer"]["cells"]) == 4

    # --report_only renders the same card from results.json alone (nothing runs).
    first_card = readme
    (out / "README.md").unlink()
    run_study(StudyArguments(dataset="digits", output_dir=str(out), report_only=True), preset)
    again_text = (out / "README.md").read_text()
    assert "rendered again from `results.json`" in again_text
    assert [line for line in again_text.splitlines() if not line.startswith("| report |")] == first_card.splitlines()

    # A second invocation with the same inputs reuses every job and says so.
    again = run_study(StudyArguments(dataset="digits", output_dir=str(out), work_dir=str(work), jobs=1,
                                     sections=["table1"], epsilon=results["epsilon"]), preset)
    assert again["jobs"] and all(j["reused"] for j in again["jobs"].values())
    assert "reused from an earlier invocation" in (out / "README.md").read_text()


def test_script_is_thin_wiring(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import reproduce
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert len((ROOT / "scripts" / "reproduce.py").read_text().splitlines()) < 80
    with pytest.raises(SystemExit):
        reproduce.main(["--dataset", "cifar10"])
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="results.json"):
        reproduce.main(["--report_only", "--output_dir", str(tmp_path)])
