"""Offline, or with HF_HUB_OFFLINE set, a command that needs the Hub fails at once in one line naming what it needed."""

import urllib.request

import pytest
from huggingface_hub import constants

from conftest import assert_one_line_error, run_in_process
from inheritune import hub


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, the Hub unreachable, and any retry of huggingface_hub fails the test."""
    import datasets

    def unreachable(request, timeout):
        assert request.get_method() == "HEAD" and request.full_url == constants.ENDPOINT
        assert timeout == hub.HUB_PROBE_TIMEOUT
        raise urllib.request.URLError("[Errno -2] Name or service not known")

    def no_retry(seconds):
        pytest.fail(f"huggingface_hub waited {seconds} s to retry")  # a BaseException: no except clause hides it

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", no_retry)
    monkeypatch.chdir(tmp_path)
    hub.hub_unreachable.cache_clear()
    yield f"{constants.ENDPOINT} cannot be reached ([Errno -2] Name or service not known)"
    hub.hub_unreachable.cache_clear()


def test_unreachable_hub_switches_the_libraries_offline(no_network):
    import datasets

    assert hub.hub_unreachable() == no_network
    assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE


@pytest.mark.parametrize("answer", ["ok", "http error"])
def test_a_hub_that_answers_is_reachable(monkeypatch, answer):
    def urlopen(request, timeout):
        if answer == "http error":
            raise urllib.request.HTTPError(request.full_url, 503, "busy", {}, None)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    hub.hub_unreachable.cache_clear()
    try:
        assert hub.hub_unreachable() == "" and not constants.HF_HUB_OFFLINE
    finally:
        hub.hub_unreachable.cache_clear()


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE is set", "no network"])
def test_commands_that_need_the_hub_fail_in_one_line(request, monkeypatch, tmp_path, offline):
    reason = request.getfixturevalue("no_network") if offline == "no network" else offline
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    (tmp_path / "doc.txt").write_text("a document")
    hub_model = (f"could not get 'openai-community/gpt2-medium' from the Hugging Face Hub ({reason}). On a machine "
                 f"without network, download it elsewhere")
    for script, args, message in (
            ("prepare_owt.py", [f"--out_dir={tmp_path / 'owt'}"],
             f"error: dataset 'Skylion007/openwebtext' split 'train' is not in the Hugging Face cache (HF_HOME) and "
             f"needs the Hub, but {reason}: pass local files with --input=PATH, or run with network"),
            ("prepare_owt.py", ["--tokenizer=HuggingFaceTB/SmolLM2-135M", f"--input={tmp_path / 'doc.txt'}"],
             f"error: cannot load the Hugging Face tokenizer of HuggingFaceTB/SmolLM2-135M (OSError: {reason}): "),
            ("analyze_rank.py", ["--model=gpt2-medium", "--data=MISSING"],
             f"error: --data='MISSING': no such file; pass a .bin of token ids or a .txt file; and --model: "
             f"{hub_model}"),
            ("analyze_rank.py", ["--model=gpt2-medium", f"--data={tmp_path / 'doc.txt'}"], f"error: {hub_model}"),
            ("evaluate.py", ["--model=gpt2-medium", "--tasks=paper"],
             f"error: arc_easy, piqa, sciq, hellaswag, lambada_openai need their datasets from the Hub ({reason}), and "
             f"the Hugging Face cache (HF_HOME={tmp_path / 'hf'}) holds none: run once with network, or copy a cache "
             f"that has them")):
        assert_one_line_error(run_in_process(script, args, cwd=tmp_path), message)
    assert not (tmp_path / "owt").exists()


def test_a_local_model_with_missing_data_names_the_data_only(tmp_path, make_hf_gpt2):
    result = run_in_process("analyze_rank.py", [f"--model={make_hf_gpt2()}", "--data=MISSING"], cwd=tmp_path)
    assert result.stderr == "error: --data='MISSING': no such file; pass a .bin of token ids or a .txt file\n"
