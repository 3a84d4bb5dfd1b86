"""Every script of scripts/ answers ``--help`` (argparse %-formats help strings: one bare ``%`` in any field's help
crashes it) and refuses to run without ``--output_dir`` instead of writing into ``./trainer_output``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("cotrain", "transfer", "evaluate_soups", "push_to_hub", "reproduce", "train_selector", "flagship")


# One Python process runs every script as `python scripts/<name>.py --help` would (as __main__, its folder first on
# sys.path), so torch and transformers are imported once rather than five times.
HELP_RUNNER = """
import contextlib, io, runpy, sys
scripts, names = sys.argv[1], sys.argv[2:]
sys.path.insert(0, scripts)
for name in names:
    sys.argv = [f"{scripts}/{name}.py", "--help"]
    out = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code or 0
    print(f"=== {name} {code}")
    print(out.getvalue())
"""


def test_help_of_every_script():
    assert {path.stem for path in (ROOT / "scripts").glob("*.py")} == set(SCRIPTS)  # a new script is added here
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER, str(ROOT / "scripts"), *SCRIPTS], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]  # a crashing --help (a bare % in a help) raises here
    outputs = dict(re.findall(r"=== (\w+) 0\n(.*?)(?=\n=== |\Z)", result.stdout, flags=re.DOTALL))
    assert set(outputs) == set(SCRIPTS), result.stdout[-3000:]
    for name, text in outputs.items():
        assert text.startswith(f"usage: {name}.py") and "--output_dir" in text, name


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
