"""Tests of the model card (rendering, round trip through the Hub client, paper numbers labelled) and of
scripts/push_to_hub.py with the Hub client mocked at its boundary (no network)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers.models.vit import ViTImageProcessorPil

from hf_advsoup import AdvSoupViTConfig, AdvSoupViTForImageClassification
from hf_advsoup import hub
from hf_advsoup.hub import (
    CardInputs,
    DatasetInfo,
    HubPushError,
    build_eval_results,
    check_can_push,
    load_training_arguments,
    render_model_card,
    stage_for_hub,
)
from hf_advsoup.soups import SoupEvaluation, SoupRecord, select_soups

REAL_OFFLINE = hub._offline
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
            patch_size=4, num_labels=3)
THREAT = {"attack": "pgd40", "norm": "linf", "epsilon": 4 / 255, "steps": 40, "restarts": 1}
BETAS = (0.0, 0.5, 1.0)


def make_result() -> SoupEvaluation:
    """A hand-made evaluation: soups and ensembles, clean and robust, on two data sets, plus rows that must stay
    out of the model-index (landscape, two-network baseline)."""
    records = []
    for dataset, n in (("toy", 9), ("other", 5)):
        for i, beta in enumerate(BETAS):
            records.append(SoupRecord(dataset, "soup", beta, "clean_accuracy", 0.6 + 0.1 * i, n, n, 1))
            records.append(SoupRecord(dataset, "ensemble", beta, "clean_accuracy", 0.62 + 0.1 * i, n, 2 * n, 2))
            if dataset == "toy":
                records.append(SoupRecord(dataset, "soup", beta, "robust_accuracy", 0.5 - 0.2 * i, 6, 250, 1,
                                          threat_model=THREAT))
                records.append(SoupRecord(dataset, "ensemble", beta, "robust_accuracy", 0.52 - 0.2 * i, 6, 500, 2,
                                          threat_model=THREAT))
    records.append(SoupRecord("toy", "landscape", 1.0, "clean_accuracy", 0.7, 9, 9, 1, beta2=1.0))
    records.append(SoupRecord("toy", "independent_soup", 0.5, "clean_accuracy", 0.1, 9, 9, 1))
    result = SoupEvaluation(records=records)
    result.selection = select_soups(result, min_clean_accuracy=0.65)
    result.settings = {"datasets_info": [{"name": "toy", "hub_id": "someone/toy", "split": "test"},
                                         {"name": "other", "hub_id": None, "split": "validation"}]}
    return result


def inputs(**overrides) -> CardInputs:
    values = dict(model_name="someone/advsoup-tiny", repo_id="someone/advsoup-tiny",
                  datasets=[DatasetInfo("toy", "someone/toy", "test"), DatasetInfo("other", None, "validation")],
                  training_datasets=["someone/toy-train"], paper_reference="imagenet-vit-b16",
                  training_arguments={"alpha": 0.4, "train_attack": "pgd2", "learning_rate": 1e-4, "unused": 3},
                  plots=["tradeoff.png"])
    values.update(overrides)
    return CardInputs(**values)


# --------------------------------------------------------------------------------------------------- card
def test_card_round_trips_with_one_result_per_beta_and_metric(tmp_path):
    result = make_result()
    card = render_model_card(inputs(), result, AdvSoupViTConfig(**TINY))
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert {"adversarial-robustness", "model-soups"} <= set(data.tags)
    assert data.license == "apache-2.0" and data.datasets == ["someone/toy-train", "someone/toy"]
    assert data.model_name == "someone/advsoup-tiny"
    results = data.eval_results
    # 2 families x 3 betas x (clean + robust) on toy, 2 x 3 clean on other; landscape and baseline left out.
    assert len(results) == 12 + 6
    keys = [(r.dataset_name, r.metric_args["family"], r.metric_args["beta"], r.metric_args["mode"]) for r in results]
    assert len(set(keys)) == len(keys)
    by_key = dict(zip(keys, results))
    robust = by_key[("toy", "soup", 0.0, "robust")]
    assert robust.metric_value == pytest.approx(0.5) and robust.metric_type == "accuracy"
    assert robust.metric_args["norm"] == "linf" and robust.metric_args["attack"] == "pgd40"
    assert robust.metric_args["epsilon"] == pytest.approx(4 / 255) and robust.metric_args["steps"] == 40
    assert "pgd40" in robust.metric_config and "linf" in robust.metric_config and "eps=" in robust.metric_config
    assert robust.dataset_type == "someone/toy" and robust.dataset_split == "test"
    assert by_key[("toy", "ensemble", 0.5, "clean")].metric_args["forward_passes"] == 18
    assert by_key[("other", "soup", 1.0, "clean")].metric_value == pytest.approx(0.8)


def test_card_text_has_usage_summary_paper_numbers_and_training_details():
    text = str(render_model_card(inputs(), make_result(), AdvSoupViTConfig(**TINY)))
    assert 'from_pretrained(repo, beta=0.5' in text and 'repo = "someone/advsoup-tiny"' in text
    # RobustBench-style summary: threat model, eps, clean and robust accuracy, forward passes.
    summary = text.split("Summary (RobustBench style)")[1].split("###")[0]
    assert "| soup beta=0 (robust mode) | Linf | 4/255 | 60.00 | 50.00 | pgd40 |" in summary
    assert "![" in text and "(tradeoff.png)" in text
    paper = text.split("## Reference numbers from the paper")[1].split("## Training details")[0]
    assert "**the paper's**" in paper and "83.76" in paper and "52.19" in paper
    assert "83.76" not in text.split("## Reference numbers from the paper")[0]  # only in the labelled section
    details = text.split("## Training details")[1]
    assert "| `alpha` | 0.4 |" in details and "| `learning_rate` | 0.0001 |" in details and "unused" not in details
    assert "\n\n\n" not in text


def test_card_names_the_attack_behind_every_robust_number():
    """With a threat model made from the attack config (as evaluate_soups makes it), the card's summary names the
    attack as run and states every setting; the model-index says it too (a PGD-40 cut to 20 steps is PGD-20)."""
    from hf_advsoup.attacks import AttackConfig
    from hf_advsoup.soups import threat_model_of

    result = make_result()
    report = threat_model_of(AttackConfig.from_preset("report", epsilon=0.1), "report")
    pgd20 = threat_model_of(AttackConfig.from_preset("pgd40", steps=20, epsilon=0.1), "pgd40")
    for r in result.records:
        if r.threat_model is not None:
            r.threat_model = report if r.family == "soup" else pgd20
    text = str(render_model_card(inputs(), result, AdvSoupViTConfig(**TINY)))
    summary = text.split("Summary (RobustBench style)")[1].split("###")[0]
    assert "| soup beta=0 (robust mode) | Linf | 0.1 | 60.00 | 50.00 | PGD-40 (Adam) + MT-9 |" in summary
    assert "Attack behind every robust number: PGD-40 (Adam) + MT-9: 40 steps of Adam" in summary
    assert "PGD-20 (Adam): 20 steps of Adam on the perturbation, step 0.1, decayed 10x at steps 10 and 15" in summary
    robust = {(r.metric_args["family"], r.metric_args["beta"]): r for r in build_eval_results(result)
              if r.metric_args["mode"] == "robust"}
    assert robust[("ensemble", 0.5)].metric_args["attack_name"] == "PGD-20 (Adam)"
    assert "PGD-20 (Adam)" in robust[("ensemble", 0.5)].metric_name
    assert "steps=20" in robust[("ensemble", 0.5)].metric_config
    assert robust[("soup", 0.0)].metric_name.endswith("(PGD-40 (Adam) + MT-9, linf, eps 0.1)")


def test_card_without_results_or_paper_numbers():
    card = render_model_card(inputs(paper_reference="digits-tiny", training_arguments=None, plots=[]), None)
    text = str(card)
    assert card.data.eval_results is None and "No numbers were measured" in text
    assert "no reference numbers" in text and "not recorded" in text
    with pytest.raises(ValueError, match="valid"):
        render_model_card(inputs(paper_reference="imagenet"), None)


def test_eval_results_only_for_soups_and_ensembles():
    results = build_eval_results(make_result())
    assert {r.metric_args["family"] for r in results} == {"soup", "ensemble"}
    assert all(r.dataset_name == r.dataset_type for r in results)  # no Hub id given: the name is used


def test_load_training_arguments_merges_groups(tmp_path):
    (tmp_path / "run.yaml").write_text("model_args:\n  adapter: cls_token\ntraining_args:\n  alpha: 0.4\nseed: 3\n")
    assert load_training_arguments(tmp_path / "run.yaml") == {"adapter": "cls_token", "alpha": 0.4, "seed": 3}
    (tmp_path / "run.json").write_text(json.dumps({"alpha": 0.5}))
    assert load_training_arguments(tmp_path / "run.json") == {"alpha": 0.5}
    with pytest.raises(ValueError, match=".json, .yaml"):
        (tmp_path / "run.txt").write_text("x")
        load_training_arguments(tmp_path / "run.txt")


def test_shipped_model_cards_parse_and_label_paper_numbers():
    cards = sorted(MODEL_CARDS.glob("*.md"))
    names = {p.stem for p in cards}
    assert {"imagenet-vit-b16", "cifar10-vit-s", "fashion-mnist-tiny"} <= names
    for path in cards:
        if path.stem == "README":
            continue
        card = ModelCard.load(path)
        assert card.data.library_name == "transformers" and "model-soups" in card.data.tags
        text = path.read_text()
        assert "Reference numbers from the paper (not measured with this checkpoint)" in text


# --------------------------------------------------------------------------------------------------- push
class FakeApi:
    """Records the calls that would reach the Hub."""

    calls: list = []
    fail_whoami = False

    def __init__(self, token=None, **kwargs):
        FakeApi.calls.append(("init", token))

    def whoami(self):
        FakeApi.calls.append(("whoami",))
        if FakeApi.fail_whoami:
            import httpx2
            from huggingface_hub.errors import HfHubHTTPError

            request = httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")
            raise HfHubHTTPError("401 Unauthorized", response=httpx2.Response(401, request=request))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        FakeApi.calls.append(("upload_folder", kwargs, sorted(p.name for p in folder.iterdir()),
                              (folder / "README.md").read_text()))
        return type("CommitInfo", (), {"commit_url": "https://huggingface.co/someone/x/commit/1"})()


@pytest.fixture
def fake_hub(monkeypatch):
    FakeApi.calls = []
    FakeApi.fail_whoami = False
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # Not offline even when the test run itself sets HF_HUB_OFFLINE=1 (read by huggingface_hub at import time).
    monkeypatch.setattr(hub, "_offline", lambda: False)
    return FakeApi


@pytest.fixture
def push_script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("push_to_hub", None)
    import push_to_hub

    return push_to_hub


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**TINY))
    model.save_pretrained(tmp_path / "ckpt")
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path / "ckpt")
    (tmp_path / "ckpt" / "run_args.json").write_text(json.dumps({"alpha": 0.4, "dataset_name": "digits"}))
    results = tmp_path / "results"
    results.mkdir()
    make_result().save(results)
    (results / "tradeoff.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return tmp_path


def test_push_uploads_one_folder_with_model_processor_card_and_plots(checkpoint, fake_hub, push_script):
    out = checkpoint / "stage"
    push_script.main([
        "--model_name_or_path", str(checkpoint / "ckpt"), "--results_dir", str(checkpoint / "results"),
        "--repo_id", "someone/advsoup-tiny", "--output_dir", str(out), "--private", "--revision", "dev",
        "--commit_message", "first soup", "--token", "hf_fake", "--paper_reference", "digits-tiny",
    ])
    names = [c[0] for c in fake_hub.calls]
    assert names == ["init", "whoami", "create_repo", "create_branch", "upload_folder"]
    assert fake_hub.calls[0] == ("init", "hf_fake")
    assert fake_hub.calls[2][2]["private"] is True
    _, kwargs, files, readme = fake_hub.calls[4]
    assert Path(kwargs["folder_path"]) == out and kwargs["revision"] == "dev"
    assert kwargs["commit_message"] == "first soup" and kwargs["repo_id"] == "someone/advsoup-tiny"
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_advsoup.py",
            "tradeoff.png", "soup_results.json", "soup_results.csv", "training_args.json"} <= set(files)
    # The uploaded card is ours (not a generic one written by save_pretrained / push_to_hub).
    card = ModelCard(readme)
    assert len(card.data.eval_results) == 18 and "| `alpha` | 0.4 |" in readme
    assert card.data.datasets == ["someone/toy"]  # digits is embedded: no Hub id to list


def test_push_refuses_offline_and_writes_nothing(checkpoint, fake_hub, push_script, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_offline", REAL_OFFLINE)  # the environment variable alone must stop the push
    out = checkpoint / "stage"
    with pytest.raises(SystemExit, match="offline mode is on"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--output_dir", str(out), "--token", "hf_fake"])
    assert fake_hub.calls == [] and not out.exists()


def test_push_refuses_without_token_or_with_a_rejected_one(checkpoint, fake_hub, push_script, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = checkpoint / "stage"
    with pytest.raises(SystemExit, match="no Hugging Face token"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--output_dir", str(out)])
    assert fake_hub.calls == [] and not out.exists()
    fake_hub.fail_whoami = True
    with pytest.raises(SystemExit, match="rejected the token"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--output_dir", str(out), "--token", "hf_bad"])
    assert [c[0] for c in fake_hub.calls] == ["init", "whoami"]  # no repo created, nothing uploaded


def test_no_push_stages_the_folder_and_refuses_a_non_empty_one(checkpoint, fake_hub, push_script):
    out = checkpoint / "stage"
    folder = push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                               "--output_dir", str(out), "--no_push"])
    assert folder == out and (out / "README.md").is_file() and fake_hub.calls == []
    loaded = AdvSoupViTForImageClassification.from_pretrained(out, beta=0.5)
    assert loaded.config.beta == 0.5
    with pytest.raises(FileExistsError, match="not empty: it holds another run.*Nothing was changed"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--output_dir", str(out), "--no_push"])


def test_check_can_push_and_stage_keep_the_card(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(HubPushError, match="offline"):
        check_can_push("hf_fake")
    model = AdvSoupViTForImageClassification(AdvSoupViTConfig(**TINY))
    card = render_model_card(inputs(), make_result(), model.config)
    stage_for_hub(tmp_path / "f", model=model, card=card)
    assert (tmp_path / "f" / "README.md").read_text() == str(card)


def test_push_without_network_stops_before_staging_and_leaves_no_temporary_folder(checkpoint, push_script,
                                                                                  monkeypatch, tmp_path):
    """A real HfApi whose endpoint refuses connections (no network): nothing is staged, no temporary copy of the
    model is left behind."""
    import functools

    from huggingface_hub import HfApi

    monkeypatch.setattr(hub, "HfApi", functools.partial(HfApi, endpoint="http://127.0.0.1:9"))
    monkeypatch.setattr(hub, "_offline", lambda: False)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(push_script.tempfile, "tempdir", str(temp))
    staged = []
    monkeypatch.setattr(push_script, "stage_for_hub", lambda folder, **kwargs: staged.append(folder))
    with pytest.raises(SystemExit, match="the Hub cannot be reached.*Check the network"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--token", "hf_fake"])
    assert staged == [] and list(temp.iterdir()) == []


def test_push_cleans_up_its_temporary_folder_after_upload_or_failure(checkpoint, fake_hub, push_script,
                                                                     monkeypatch, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(push_script.tempfile, "tempdir", str(temp))
    argv = ["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x", "--token", "hf_fake"]
    push_script.main(argv)
    assert [c[0] for c in fake_hub.calls][-1] == "upload_folder" and list(temp.iterdir()) == []

    def broken_upload(self, **kwargs):
        raise ConnectionError("connection reset during upload")

    monkeypatch.setattr(FakeApi, "upload_folder", broken_upload)
    with pytest.raises(ConnectionError):
        push_script.main(argv)
    assert list(temp.iterdir()) == []
    # --no_push without --output_dir: the staged temporary folder is the result, kept.
    folder = push_script.main([*argv, "--no_push"])
    assert folder.parent == temp and (folder / "model.safetensors").is_file()


def test_push_of_a_truncated_checkpoint_names_the_file(checkpoint, fake_hub, push_script):
    from hf_advsoup.trainer import CorruptCheckpointError

    weights = checkpoint / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=r"ckpt/model\.safetensors is truncated or corrupt"):
        push_script.main(["--model_name_or_path", str(checkpoint / "ckpt"), "--repo_id", "someone/x",
                          "--output_dir", str(checkpoint / "stage"), "--no_push"])


def test_push_of_a_staged_folder_uploads_it_as_it_is_with_its_remote_code(checkpoint, fake_hub, push_script):
    """--folder (the flagship's layout): the card and files are uploaded untouched; the remote code a clone lacks
    (model_cards/ does not commit it) is added to a temporary copy, never to the folder itself."""
    folder = checkpoint / "flagship"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (folder / name).write_bytes((checkpoint / "ckpt" / name).read_bytes())
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# our own card\n")
    (folder / "results.json").write_text("{}")
    push_script.main(["--folder", str(folder), "--repo_id", "someone/flagship", "--token", "hf_fake"])
    _, kwargs, files, readme = fake_hub.calls[-1]
    assert readme.endswith("# our own card\n")
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "results.json",
            "modeling_advsoup.py", "configuration_advsoup.py"} <= set(files)
    assert not (folder / "modeling_advsoup.py").exists()  # the folder itself is unchanged
    assert not Path(kwargs["folder_path"]).exists()  # the temporary copy is gone
    (folder / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="not a staged model folder .*model.safetensors"):
        push_script.main(["--folder", str(folder), "--repo_id", "someone/flagship", "--token", "hf_fake"])
    with pytest.raises(SystemExit, match="needs --repo_id"):
        push_script.main(["--folder", str(folder)])
