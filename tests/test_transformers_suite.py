"""transformers' own common model tests, run against this model: every test that passes for
``ViTForImageClassification`` must pass for ``AdvSoupViTForImageClassification`` (see ``upstream_vit_suite.py``).

The tests of the installed transformers version come from its source distribution on PyPI (a package registry, like
the install itself), fetched once with pip into ``~/.cache/hf_advsoup/`` (or read from the folder named by
``HF_ADVSOUP_TRANSFORMERS_TESTS``); the test is skipped when neither is available. By default it runs ViT and four of
this model's configurations (the LayerNorm adapter with mean pooling, the patch-embedder adapter with cls pooling,
the classification-token adapter at ``beta=0.5`` and with drop path 0.1: about four minutes on one CPU core);
``HF_ADVSOUP_UPSTREAM_SUITE=full`` runs every adapter x pooling configuration.
"""

from __future__ import annotations

import collections
import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

import pytest
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLASSES = [
    "Test_ViT",
    "Test_AdvSoup_layernorm_mean",
    "Test_AdvSoup_patch_embed_cls",
    "Test_AdvSoup_cls_token_mean_beta05",
    "Test_AdvSoup_cls_token_mean_droppath",
]


def upstream_tests_dir() -> str | None:
    """The folder holding transformers' ``test_modeling_common.py`` for the installed version, or None."""
    explicit = os.environ.get("HF_ADVSOUP_TRANSFORMERS_TESTS")
    if explicit:
        return explicit
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_advsoup",
        f"transformers-{transformers.__version__}-tests",
    )
    if os.path.exists(os.path.join(cache, "test_modeling_common.py")):
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        fetch = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             f"transformers=={transformers.__version__}", "-d", tmp],
            capture_output=True, text=True, timeout=600,
        )
        archives = glob.glob(os.path.join(tmp, "transformers-*.tar.gz"))
        if fetch.returncode != 0 or not archives:
            return None
        os.makedirs(cache, exist_ok=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = member.name.split("/")
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    with open(os.path.join(cache, parts[2]), "wb") as out:
                        out.write(archive.extractfile(member).read())
    return cache


def outcomes(junit_xml: str) -> dict[str, dict[str, str]]:
    """``{test class: {test name: "passed" | "failed" | "skipped"}}`` from a JUnit report; a test with any failing
    subtest is failed."""
    result: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        cls, name = case.get("classname").rsplit(".", 1)[-1], case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        else:
            state = "passed"
        previous = result[cls].get(name)
        if previous != "failed" and not (previous == "passed" and state == "skipped"):
            result[cls][name] = state
    return result


def test_common_model_tests_pass_as_for_vit(tmp_path):
    pytest.importorskip("parameterized", reason="transformers' common tests need `parameterized` (dev extra)")
    directory = upstream_tests_dir()
    if directory is None:
        pytest.skip("transformers' test sources are not available (no package index reachable, no cache)")
    full = os.environ.get("HF_ADVSOUP_UPSTREAM_SUITE") == "full"
    suite = os.path.join(HERE, "upstream_vit_suite.py")
    targets = [suite] if full else [f"{suite}::{cls}" for cls in DEFAULT_CLASSES]
    report = tmp_path / "junit.xml"
    # PYTHONPATH: the suite imports this checkout's hf_advsoup (and its tests/conftest.py), not another installed one.
    root = os.path.dirname(HERE)
    env = {**os.environ, "HF_ADVSOUP_TRANSFORMERS_TESTS": directory, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-W", "ignore",
         f"--junitxml={report}", f"--rootdir={tmp_path}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600,
    )
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    results = outcomes(str(report))
    vit = results.pop("Test_ViT")
    assert sum(state == "passed" for state in vit.values()) > 50, vit  # the suite really ran
    problems = []
    for cls, tests in sorted(results.items()):
        for name, state in sorted(tests.items()):
            if state == "failed" or (vit.get(name) == "passed" and state != "passed"):
                problems.append(f"{cls}.{name}: {state} (ViT: {vit.get(name)})")
    counts = {
        cls: dict(collections.Counter(tests.values())) for cls, tests in [("Test_ViT", vit), *sorted(results.items())]
    }
    print("\n".join(f"{cls}: {count}" for cls, count in counts.items()))
    assert not problems, "\n".join(problems) + "\n" + run.stdout[-3000:]
    # ViT plus 13 configurations: five adapters x two poolings, beta 0.5 (two adapters), drop path 0.1.
    assert len(results) == (13 if full else len(DEFAULT_CLASSES) - 1), sorted(results)
