import ast
import atexit
import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import yaml

from zimdb.data.artifacts import encoded_dtype
from zimdb.imports import project_files
from zimdb.model.lstm import ModelConfig
from zimdb.params import validate

ROOT = Path(__file__).resolve().parents[1]

# modelscope and datasets fix their cache folders when first imported: tests (and the stages
# they start) must neither fill nor reuse the user's, nor send the user's ModelScope login.
_CACHE = tempfile.mkdtemp(prefix="zimdb-tests-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
for _name in (
    "MODELSCOPE_CACHE",
    "MODELSCOPE_HOME",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE",
):
    os.environ[_name] = os.path.join(_CACHE, _name.lower())
for _name in (
    "MODELSCOPE_ENDPOINT",
    "MODELSCOPE_DOMAIN",
    "MODELSCOPE_PREFER_AI_SITE",
    "MODELSCOPE_API_TOKEN",
):
    os.environ.pop(_name, None)

SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"

POSITIVE = ["a wonderful film", "great acting and a great story", "i loved it, brilliant"]
NEGATIVE = ["a terrible film", "awful acting and a boring story", "i hated it, dreadful"]


def write_params(root: Path, **overrides) -> None:
    """params.yaml of the project with `section.key` overrides, e.g. **{"train.epochs": 1}."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def model_config(vocab_size: int, **overrides) -> ModelConfig:
    """The model params.yaml describes, with `overrides` (a smaller size, no dropout, ...)."""
    train = validate(yaml.safe_load((ROOT / "params.yaml").read_text())).train
    return dataclasses.replace(ModelConfig.from_params(train, vocab_size), **overrides)


def movie_of(split: str, review_id: int) -> str:
    """The movie write_archive gives a review: two ids per movie, its pos and neg reviews alike."""
    return f"tt{(1 if split == 'train' else 2) * 1000000 + review_id // 2:07d}"


def write_archive(path: Path, per_label: int = 6, extra: dict[str, bytes] | None = None) -> Path:
    """A small .tar.gz in the Stanford layout: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt
    and urls_{pos,neg}.txt, whose line <id> is the IMDb page of review <id>'s movie."""
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("aclImdb/README", b"not a review")
        for split in ("train", "test"):
            for label, texts, rating in (("pos", POSITIVE, 9), ("neg", NEGATIVE, 2)):
                for i in range(per_label):
                    text = f"{texts[i % len(texts)]} <br /><br />number {i} of {split}"
                    add(f"aclImdb/{split}/{label}/{i}_{rating}.txt", text.encode())
                urls = "".join(
                    f"http://www.imdb.com/title/{movie_of(split, i)}/usercomments\n"
                    for i in range(per_label)
                )
                add(f"aclImdb/{split}/urls_{label}.txt", urls.encode())
        for name, data in (extra or {}).items():
            add(name, data)
    return path


IMDB_SCRIPT = """\
import datasets

_REVIEWS = {reviews!r}


class Imdb(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIGS = [datasets.BuilderConfig(name="plain_text", version=datasets.Version("1.0.0"))]

    def _info(self):
        return datasets.DatasetInfo(
            features=datasets.Features(
                {{"text": datasets.Value("string"), "label": datasets.ClassLabel(names={names!r})}}
            )
        )

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={{"split": "train"}}),
            datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={{"split": "test"}}),
            datasets.SplitGenerator(
                name=datasets.Split("unsupervised"), gen_kwargs={{"split": "unsupervised"}}
            ),
        ]

    def _generate_examples(self, split):
        for i, (text, label) in enumerate(_REVIEWS[split]):
            yield i, {{"text": text, "label": label}}
"""


def imdb_reviews(extra_train: tuple[tuple[str, str | int], ...] = ()) -> dict[str, list]:
    """(text, label) per split as Hugging Face's imdb script yields them: label a class name,
    or -1 for the unsupervised split's unlabelled reviews."""
    return {
        split: [(f"{t} ({split})", "pos") for t in POSITIVE]
        + [(f"{t} ({split})", "neg") for t in NEGATIVE]
        + (list(extra_train) if split == "train" else [])
        for split in ("train", "test")
    } | {"unsupervised": [("an unlabelled review", -1), ("another unlabelled one", -1)]}


def imdb_script(reviews: dict[str, list] | None = None, names: tuple[str, ...] = ("neg", "pos")):
    """An imdb.py in the shape of Hugging Face's imdb loading script (text, label a ClassLabel,
    splits train/test/unsupervised), its reviews inline instead of in the Stanford archive."""
    return IMDB_SCRIPT.format(reviews=reviews or imdb_reviews(), names=list(names))


class FakeHub:
    """The ModelScope hub as modelscope's own HTTP requests meet it, holding one dataset repo.

    Installed in place of requests' HTTPAdapter.send, the one function every request of
    modelscope (its hub API client and its file downloads) goes through, so that everything
    above it runs as it does for a user with a network. `offline` makes requests fail as on a
    machine without a network, from the first whose path starts with `offline_from` on; `hang`
    makes them wait as a blackholed network does, 10 s before they time out.
    """

    REPO = "modelscope/imdb"  # where MsDataset.load looks for 'imdb'
    HUB_ID = 4321  # the repo's number on the hub, which its file-tree API is addressed by

    def __init__(self):
        self.files = {"README.md": b"# imdb\n", "imdb.py": imdb_script().encode()}
        self.offline: OSError | None = None
        self.offline_from = ""
        self.hang = threading.Event()
        self.release = threading.Event()
        self.requests: list[tuple[str, str, str]] = []  # method, path, FilePath
        self.unknown: list[str] = []

    def answer(self, adapter, request):
        import requests
        import urllib3

        url = urlsplit(request.url)
        path, file = url.path, parse_qs(url.query).get("FilePath", [""])[0]
        self.requests.append((request.method, path, file))
        if self.hang.is_set() and not self.release.wait(10):
            raise requests.ConnectTimeout(f"{url.netloc} did not answer")
        if self.offline is not None and path.startswith(self.offline_from):
            self.offline_from = ""
            raise requests.ConnectionError(f"no connection to {url.netloc}") from self.offline
        status, body, headers = 200, {"Code": 200, "Data": {}}, {}
        if path == "/":  # the stage's own check that the hub answers at all
            body = {}
        elif path == f"/openapi/v1/datasets/{self.REPO}":
            owner, name = self.REPO.split("/")
            body = {"success": True, "data": {"id": self.HUB_ID, "owner": owner, "name": name}}
        elif path == f"/api/v1/datasets/{self.REPO}":
            body = {"Code": 200, "Data": {"Id": self.HUB_ID, "Type": 4}}  # 4: a "general" dataset
        elif path == f"/api/v1/datasets/{self.HUB_ID}/repo/tree":
            files = [
                {"Type": "blob", "Path": n, "Size": len(b), "Sha256": hashlib.sha256(b).hexdigest()}
                for n, b in self.files.items()
            ]
            body = {"Code": 200, "Data": {"Files": files}}
        elif path == f"/api/v1/datasets/{self.REPO}/repo" and file in self.files:
            body = self.files[file]
            headers = {"ETag": hashlib.sha256(body).hexdigest(), "Content-Length": str(len(body))}
        elif path == f"/api/v1/datasets/{self.REPO}/download/increase":
            pass
        else:
            self.unknown.append(f"{request.method} {request.url}")
            status, body = 404, {"Code": 404, "Message": f"{path} not found"}
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json"}
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(b"" if request.method == "HEAD" else body),
            headers=headers,
            status=status,
            preload_content=False,
            request_method=request.method,
            request_url=request.url,
        )
        return adapter.build_response(request, raw)


@pytest.fixture
def fake_hub(monkeypatch):
    """A FakeHub that answers every HTTP request made through requests during the test."""
    import requests

    hub = FakeHub()
    monkeypatch.setattr(
        requests.adapters.HTTPAdapter,
        "send",
        lambda adapter, request, **_: hub.answer(adapter, request),
    )
    yield hub
    hub.release.set()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def python_env() -> dict[str, str]:
    """The environment for `dvc` and the stage commands: this interpreter's bin dir first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def interruptible() -> None:
    """Popen's preexec_fn for a child the test stops with SIGINT, as Ctrl-C would.

    A shell starts a background job with SIGINT ignored, the child inherits that through exec,
    and Python then installs no KeyboardInterrupt handler: run that way, the tests would see the
    signal ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


RUN_TIMEOUT = 900  # seconds: a hung command fails its test rather than holding CI


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env=python_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def make_project(root: Path, **overrides) -> Path:
    """A git + DVC copy of the project's files (tracked or not ignored) with params overrides."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    write_params(root, **overrides)
    git_init(root)
    return root


def git_init(root: Path) -> None:
    """A git repository of everything in `root`, committed (DVC and dvclive expect one)."""
    run(["git", "init", "-q"], root)
    commit(root, "copy")


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


@pytest.fixture
def project(tmp_path: Path):
    """Call with params overrides to get a fresh project copy in a temporary folder."""
    return lambda **overrides: make_project(tmp_path / "project", **overrides)


# A 100-review-per-split subset with a tiny model: the whole pipeline in well under a minute.
SMALL = {
    "download.source": "aclimdb",
    "download.archive": str(SHARED_ARCHIVE),
    "download.limit": 100,
    "train.epochs": 2,
    "train.hidden_dim": 8,
    "train.embedding_dim": 8,
    "vocab.size": 300,
    "encode.max_len": 32,
    "train.precision": "bf16",  # the AMP path end to end: emulated, and slow, on a CPU without it
}


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"{SHARED_ARCHIVE} is absent (CI and the dev machines have it)")
    return SHARED_ARCHIVE


@pytest.fixture(scope="session")
def built(tmp_path_factory, shared_archive):
    """A project copy after one `dvc repro` on SMALL, committed (dvc.lock and metrics) as a
    baseline, and that run's output. Tests that change it restore it (see clean_project)."""
    root = make_project(tmp_path_factory.mktemp("built") / "project", **SMALL)
    first = dvc("repro", cwd=root)
    commit(root, "baseline run")
    return root, first


@pytest.fixture
def clean_project(built):
    """The built project, put back as it was after the test."""
    project, _ = built
    yield project
    run(["git", "reset", "-q", "--hard", "HEAD"], project)
    run(["git", "clean", "-qfd", "-e", "data/"], project)
    dvc("checkout", "--force", cwd=project)


def encoded_records(
    n: int, max_len: int, vocab_size: int, min_len: int = 1, seed: int = 0
) -> np.ndarray:
    """Random encoded reviews as the encode stage lays them out: ids >= 2 up to each length,
    PAD after it, labels 0/1."""
    rng = np.random.default_rng(seed)
    records = np.zeros(n, dtype=encoded_dtype(vocab_size, max_len))
    records["length"] = rng.integers(min_len, max_len + 1, n)
    ids = rng.integers(2, vocab_size, (n, max_len))
    records["ids"] = ids * (np.arange(max_len) < records["length"][:, None])
    records["label"] = rng.integers(0, 2, n)
    return records


TRAIN_PLOTS = "dvclive/train/plots/metrics"
# Charts that draw both models: the rows each model's stage logs (their `model` field says which).
LSTM_CUSTOM, BASELINE_CUSTOM = "dvclive/evaluate/plots/custom", "dvclive/baseline/plots/custom"
# Every chart of `dvc plots show` / `dvc plots diff`: id, title, x and y fields, the files drawn.
# dvclive writes more files than these (speed per epoch); none of them may become a chart.
PLOTS = {
    "Accuracy": (
        "Accuracy per epoch (train, val)",
        "step",
        "acc",
        [f"{TRAIN_PLOTS}/train/acc.tsv", f"{TRAIN_PLOTS}/val/acc.tsv"],
    ),
    "Loss": (
        "Loss per epoch (train, val)",
        "step",
        "loss",
        [f"{TRAIN_PLOTS}/train/loss.tsv", f"{TRAIN_PLOTS}/val/loss.tsv"],
    ),
    "ROC": (
        "ROC curve (test), both models",
        "fpr",
        "tpr",
        [f"{LSTM_CUSTOM}/roc.json", f"{BASELINE_CUSTOM}/roc.json"],
    ),
    "Accuracy by length": (
        "Test accuracy by review length, both models",
        "words",
        "accuracy",
        [f"{LSTM_CUSTOM}/by_length.json", f"{BASELINE_CUSTOM}/by_length.json"],
    ),
    "Confusion matrix": (
        "Confusion matrix (test, threshold 0.5)",
        "predicted",
        "actual",
        [f"{LSTM_CUSTOM}/confusion_matrix.json"],
    ),
}


# dvc.yaml as the code implies it: each stage's imports and the params.yaml sections it loads.


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(cmd: str) -> Path:
    prefix = "python -m "
    assert cmd.startswith(prefix), cmd
    return Path(*cmd[len(prefix) :].split(".")).with_suffix(".py")


def sections_read(path: Path) -> set[str]:
    """Sections of params.yaml the module loads with params.load("<section>")."""
    tree = ast.parse((ROOT / path).read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "params"
    }


def expected_code_deps() -> dict[str, set[str]]:
    return {
        name: {str(p) for p in project_files(s["cmd"].removeprefix("python -m "))}
        for name, s in stages().items()
    }


def expected_params() -> dict[str, set[str]]:
    all_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {
        name: {
            f"{sec}.{key}"
            for sec in sections_read(module_file(s["cmd"]))
            for key in all_params[sec]
        }
        for name, s in stages().items()
    }


def source_files() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT)) for d in ("stages", "zimdb") for p in (ROOT / d).rglob("*.py")
    )
