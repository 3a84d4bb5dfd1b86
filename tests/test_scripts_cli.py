"""Every script of scripts/ answers ``--help`` (argparse %-formats help strings: one bare ``%`` in any field's help
crashes it) and refuses to run without ``--output_dir`` instead of writing into ``./trainer_output``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("cotrain", "transfer", "evaluate_soups", "push_to_hub", "reproduce")


def run_script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=300, check=False)


def test_help_of_every_script():
    """One subprocess per script (each imports torch and transformers: a few seconds each)."""
    assert {path.stem for path in (ROOT / "scripts").glob("*.py")} == set(SCRIPTS)  # a new script is added here
    for name in SCRIPTS:
        result = run_script(name, "--help")
        assert result.returncode == 0, f"{name}.py --help failed:\n{result.stderr[-2000:]}"
        assert result.stdout.startswith("usage:") and "--output_dir" in result.stdout, name


@pytest.mark.parametrize("name", ["cotrain", "transfer"])
def test_training_scripts_require_output_dir(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    script = __import__(name)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--max_steps", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--output_dir" in error and "required" in error
    assert list(tmp_path.iterdir()) == []  # no ./trainer_output, nothing else
    # A recipe file may give it instead of the command line.
    (tmp_path / "recipe.yaml").write_text(f"output_dir: {tmp_path / 'from_recipe'}\n")
    parse = script.parse_arguments if name == "cotrain" else script.parse_args
    parsed = parse([str(tmp_path / "recipe.yaml")])
    assert parsed[-1].output_dir == str(tmp_path / "from_recipe")
