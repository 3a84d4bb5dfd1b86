"""Suite-wide settings: one intra-op thread per test process.

The tests run tiny models where thread start-up costs more than it saves, and CI machines are small and shared:
with two threads per process an oversubscribed core made a tiny AutoAttack test 25x slower.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _main_job_on_digits():
    """``scripts/cotrain.py`` without a recipe runs the Fashion-MNIST main job where Fashion-MNIST is installed and
    the digits run elsewhere; tests in this process see the digits run on every machine (session scope, so that
    module-scoped fixtures see it too; tests that run the script in a subprocess pass ``--dataset_name digits``).
    The tests of that choice set ``hf_advsoup.data.local_preset_folder`` themselves."""
    import hf_advsoup.data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_advsoup.data, "local_preset_folder", lambda name: None)
        yield


@pytest.fixture(autouse=True)
def _hub_answers_without_a_network(monkeypatch):
    """The Hub reachability probe (``hf_advsoup.hub_access``) reports "reachable" without a request, so that tests
    never touch the network and tests that fake the Hub see their fakes called; tests of an unreachable Hub patch
    ``_probe_hub`` themselves."""
    import hf_advsoup.hub_access

    monkeypatch.setattr(hf_advsoup.hub_access, "_probe_hub", lambda timeout: None)
    monkeypatch.setattr(hf_advsoup.hub_access, "_probe_result", {})
