"""How every script ends (``hf_advsoup.cli.run``): a user error is one line ``error: ...`` and exit code 2, a Ctrl-C
one line with what to do next and exit code 130, a bug keeps its traceback; ``--debug``/``HF_ADVSOUP_DEBUG=1`` show
the traceback. Output folders are checked before any work with one wording, and a Hub id fails fast without the
Hub."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_advsoup import cli

ROOT = Path(__file__).resolve().parents[1]


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error", [
    ValueError("epsilon 4 looks like 4/255:\n  give 4/255."),
    FileNotFoundError("No such file or folder: 'data/x'"),
    SystemExit("--auto needs a selector."),
    SystemExit("error: Cannot push: offline mode is on."),
    ImportError("The soup table's attack 'apgd-ce' runs through pyautoattack, which is not installed."),
])
def test_user_errors_end_with_one_line_and_exit_code_2(error, capsys):
    def main(argv):
        raise error

    code, err = _run(main, [], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "error: error:" not in err and "  " not in err  # one prefix; line breaks folded


def test_debug_flag_or_environment_shows_the_traceback_and_bugs_keep_theirs(capsys, monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise ValueError("bad value")

    with pytest.raises(ValueError, match="bad value"):
        cli.run(main, ["--alpha", "0.5", "--debug"])
    assert seen[-1] == ["--alpha", "0.5"]  # the flag is the runner's, not the script's
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        cli.run(main, [])
    monkeypatch.delenv(cli.DEBUG_ENV)
    # --debug VALUE is the Trainer's own option and stays on the command line.
    assert cli.strip_debug_flag(["--debug", "underflow_overflow", "--x", "1", "--debug"]) == [
        "--debug", "underflow_overflow", "--x", "1"]

    def buggy(argv):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    with pytest.raises(AttributeError):  # not a user error: the traceback is shown
        cli.run(buggy, [])


def test_ctrl_c_ends_with_one_line_hint_and_exit_code_130(capsys):
    def interrupted(argv):
        raise cli.Interrupted("training stopped; give the same command with --resume_from_checkpoint latest.")

    code, err = _run(interrupted, [], capsys)
    assert code == 130 and err == ("interrupted: training stopped; give the same command with --resume_from_checkpoint "
                                   "latest.\n")

    def plain(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        cli.run(plain, [], interrupt_hint=lambda argv: "run the same command again to continue.")
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted: run the same command again to continue.\n"


def test_output_locations_are_refused_before_any_work_with_one_wording(tmp_path):
    afile = tmp_path / "results.txt"
    afile.write_text("x")
    with pytest.raises(cli.OutputLocationError, match=r"--output_dir .*results\.txt is a file, not a folder\. "
                       r"Nothing was changed\. Choose another --output_dir\."):
        cli.check_output_dir(afile)
    with pytest.raises(FileExistsError, match=r"cannot be created: .*results\.txt is a file"):
        cli.check_output_dir(afile / "run")
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / ".gitignore").write_text("")
    assert cli.check_output_dir(run) == ["checkpoint-3", "config.json"]  # may exist when it need not be empty
    with pytest.raises(FileExistsError, match=r"--work_dir .*run is not empty: it holds another run: config\.json, "
                       r"checkpoint-3 \(2 entries in all\)\. Nothing was changed\. Pass --overwrite_output_dir to "
                       r"replace it, or choose another --work_dir\."):
        cli.check_output_dir(run, flag="--work_dir", must_be_empty=True,
                             ways_out=("--overwrite_output_dir to replace it",))
    assert cli.check_output_dir(tmp_path / "new" / "deeper") == []
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(FileExistsError, match="is a folder, not a file"):
        cli.check_output_file(run, flag="--card_path")


def test_a_hub_id_fails_in_seconds_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    import datasets
    from huggingface_hub import constants

    import hf_advsoup.hub_access as hub_access
    from hf_advsoup.data import DataArguments, DatasetUnavailableError, load_image_dataset

    # go_offline changes process-wide state: registered here so that it is undone after the test.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_access, "_probe_hub",
                        lambda timeout: "https://huggingface.co cannot be reached (ConnectError: no network)")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="cannot be reached"):
        load_image_dataset(DataArguments(dataset_name="someone/no-such-dataset"))
    with pytest.raises(FileNotFoundError, match=r"--model_name_or_path someone/no-such-model .*Hub id, but the Hub "
                       r"cannot be used .*not in the local cache"):
        hub_access.check_model_source("someone/no-such-model")
    assert time.perf_counter() - start < 10  # without the probe: ~25 s of retries each
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"  # the cache still works, offline


def test_offline_mode_is_reported_without_asking_the_hub(monkeypatch):
    from huggingface_hub import constants

    import hf_advsoup.hub_access as hub_access

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_access, "_probe_hub", lambda timeout: pytest.fail("the Hub was asked"))
    assert hub_access.hub_unreachable_reason() == "offline mode is on (HF_HUB_OFFLINE=1)"
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        hub_access.check_model_source("someone/no-such-model")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        hub_access.check_model_source("./runs/missing")


# Every script of scripts/ run as `python scripts/<name>.py ARGS` would be (as __main__, through cli.run), in one
# process so that torch and transformers are imported once; prints each exit code and stderr.
ERROR_RUNNER = """
import contextlib, io, json, runpy, sys
scripts, cases = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, scripts)
for name, args in cases:
    sys.argv = [f"{scripts}/{name}.py", *args]
    err = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    print(json.dumps([name, code, err.getvalue()]))
"""


def test_every_script_ends_a_user_error_with_one_line_and_exit_code_2(tmp_path):
    import json

    afile = tmp_path / "afile"
    afile.write_text("x")
    missing = str(tmp_path / "missing")
    cases = [
        ("cotrain", ["--output_dir", str(tmp_path / "a"), "--train_epsilon", "8/0"]),
        ("cotrain", ["--output_dir", str(tmp_path / "b"), "--adapter", "bogus"]),
        ("cotrain", ["--output_dir", str(afile)]),
        ("cotrain", ["--output_dir", str(tmp_path / "c"), "--dataset_name", missing + "/", "--soup_table", "false"]),
        ("evaluate_soups", ["--model_name_or_path", missing, "--output_dir", str(tmp_path / "d")]),
        ("train_selector", ["--model_name_or_path", missing, "--output_dir", str(tmp_path / "e")]),
        ("transfer", ["--model_name_or_path", missing, "--output_dir", str(tmp_path / "f")]),
        ("push_to_hub", ["--model_name_or_path", missing, "--repo_id", "a/b", "--no_push"]),
        ("reproduce", ["--work_dir", str(afile)]),
        ("flagship", ["--jobs", "0"]),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ADVSOUP_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", ERROR_RUNNER, str(ROOT / "scripts"), json.dumps(cases)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert [name for name, _, _ in outcomes] == [name for name, _ in cases], result.stdout[-3000:]
    for (name, code, err), (_, args) in zip(outcomes, cases):
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, args, err[-2000:])
        assert lines[-1].startswith("error: ") and "Traceback" not in err, (name, args, err[-2000:])
    messages = [err.splitlines()[-1] for _, _, err in outcomes]
    assert "8/0" in messages[0] and "bogus" in messages[1] and "is a file, not a folder" in messages[2]
    assert "No such file or folder" in messages[3] and all("missing" in m for m in messages[4:8])
    assert "is a file, not a folder" in messages[8] and "--jobs" in messages[9]
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
