"""``hbt data fetch`` against a local HTTP server on 127.0.0.1, the pins, the missing-data error.

No test here reaches any address but loopback: every download goes to the
server these tests start, and ``$HBT_FETCH_BASE_URL`` defaults to a closed
loopback port for the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import hbt.config as config
from hbt.cli import main
from hbt.config import HBTConfig
from hbt.data import fetch as F

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


# ---------------------------------------------------------------------------
# The local server
# ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv = self.server
        srv.requests.append(self.path)
        body = srv.routes.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        if isinstance(body, Path):
            body = body.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drops.get(self.path, 0) > 0:
            # Drop the connection half-way through the announced body.
            srv.drops[self.path] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, bytes | Path] = {}
        self.drops: dict[str, int] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, ds: F.Dataset, files: dict[str, bytes | Path]) -> None:
        """Serves ``files`` at the dataset's real URL layout (``/<owner>/<repo>/<commit>/<path>``)."""
        for name, body in files.items():
            self.routes[urlsplit(ds.url(name, self.url)).path] = body

    def path_of(self, ds: F.Dataset, name: str) -> str:
        return urlsplit(ds.url(name, self.url)).path


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch, tmp_path):
    # Anything that would use the default base URL goes to a closed loopback port instead of GitHub,
    # no proxy is consulted, and a connection to any other address fails the test.
    monkeypatch.setenv(F.BASE_URL_ENV, "http://127.0.0.1:9")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    connect = socket.socket.connect

    def loopback_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to reach {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_connect)
    monkeypatch.setenv("HBT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HBT_DATA_ROOT", raising=False)


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


# ---------------------------------------------------------------------------
# Small fixture files in the real layouts
# ---------------------------------------------------------------------------


def _qa_json(lang: str, n: int) -> bytes:
    sents = [f"{lang} sentence {i}." for i in range(n)]
    context = " ".join(sents)
    breaks, start = [], 0
    for s in sents:
        breaks.append([start, start + len(s)])
        start += len(s) + 1
    qas = [{"id": f"q{i}", "question": f"{lang} question {i}?",
            "answers": [{"text": "sentence", "answer_start": breaks[i][0] + len(lang) + 1}]} for i in range(n)]
    doc = {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas, "sentences": sents,
                                                   "sentence_breaks": breaks}]}], "version": "1.1"}
    return json.dumps(doc, ensure_ascii=False).encode()


FIXTURE_FILES: dict[str, dict[str, bytes]] = {
    "xquad_r": {"LICENSE": b"CC BY-SA 4.0 (fixture)\n", "en.json": _qa_json("en", 3), "de.json": _qa_json("de", 3)},
    "mlqa_r": {"LICENSE": b"CC BY-NC 4.0 (fixture)\n", "en.json": _qa_json("en", 2), "zh.json": _qa_json("zh", 2)},
    "tatoeba": {"README.md": b"# Tatoeba (fixture)\n", "tatoeba.deu-eng.deu": "Hallo.\nDanke.\n".encode(),
                "tatoeba.deu-eng.eng": b"Hello.\nThanks.\n"},
}


def _fixture_dataset(name: str) -> F.Dataset:
    """The real source (repository, commit, remote layout), pinned to the fixture files."""
    pins = {n: hashlib.sha256(b).hexdigest() for n, b in FIXTURE_FILES[name].items()}
    return dataclasses.replace(F.DATASETS[name], pins=pins)


@pytest.fixture
def fixtures(server, monkeypatch) -> dict[str, F.Dataset]:
    out = {}
    for name in FIXTURE_FILES:
        ds = _fixture_dataset(name)
        monkeypatch.setitem(F.DATASETS, name, ds)
        server.serve(ds, FIXTURE_FILES[name])
        out[name] = ds
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------


def test_fetch_succeeds_and_verifies(server, fixtures, tmp_path):
    dest, lines = tmp_path / "dest", []
    got = F.fetch(dest=dest, base_url=server.url, log=lines.append)

    assert got == {"xquad_r": dest / "xquad-r", "mlqa_r": dest / "mlqa-r", "tatoeba": dest / "tatoeba"}
    for name, files in FIXTURE_FILES.items():
        for fname, body in files.items():
            assert (got[name] / fname).read_bytes() == body
    # Nothing else: no staging folder, no temporary names.
    assert _tree(dest) == sorted(
        [ds.folder for ds in fixtures.values()]
        + [f"{fixtures[n].folder}/{f}" for n, files in FIXTURE_FILES.items() for f in files]
    )
    # The real layouts: XQuAD-R's licence from the LAReQA root, MLQA-R at commit 354d67d, LASER's v1 folder.
    assert "/google-research-datasets/lareqa/9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c/LICENSE" in server.requests
    assert "/google-research-datasets/lareqa/354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/en.json" in server.requests
    assert any(r.startswith("/facebookresearch/LASER/") and r.endswith("/data/tatoeba/v1/tatoeba.deu-eng.deu")
               for r in server.requests)
    # Each licence is printed.
    for ds in fixtures.values():
        assert any(ds.licence in line for line in lines)

    # A second fetch verifies what is there and downloads nothing.
    n = len(server.requests)
    F.fetch(dest=dest, base_url=server.url, log=lines.append)
    assert len(server.requests) == n
    assert "already present" in lines[-2]


def test_fetch_default_dest_is_the_cache_the_default_paths_resolve_to(server, fixtures, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path / "checkout")  # no ../shared/data beside it
    assert not Path(config.resolve_path("../shared/data/xquad-r")).exists()
    F.fetch(["xquad_r"], base_url=server.url, log=lambda s: None)
    assert config.resolve_path("../shared/data/xquad-r") == str(tmp_path / "cache" / "data" / "xquad-r")
    assert (tmp_path / "cache" / "data" / "xquad-r" / "en.json").read_bytes() == FIXTURE_FILES["xquad_r"]["en.json"]


def test_wrong_checksum_is_a_clear_error_and_leaves_nothing(server, fixtures, tmp_path):
    ds = fixtures["xquad_r"]
    server.serve(ds, {"en.json": FIXTURE_FILES["xquad_r"]["en.json"].replace(b"en question", b"EN QUESTION")})
    dest = tmp_path / "dest"
    with pytest.raises(F.FetchError, match="SHA-256 mismatch") as e:
        F.fetch(["xquad_r"], dest=dest, base_url=server.url, log=lambda s: None)
    assert ds.url("en.json", server.url) in str(e.value)
    assert ds.pins["en.json"] in str(e.value)
    assert _tree(dest) == []  # not even the files that did verify, nor a temporary name


def test_dropped_connection_is_a_clear_error_then_a_clean_retry(server, fixtures, tmp_path):
    ds = fixtures["tatoeba"]
    path = server.path_of(ds, "tatoeba.deu-eng.eng")
    server.drops[path] = 1
    dest = tmp_path / "dest"
    with pytest.raises(F.FetchError, match="connection dropped after") as e:
        F.fetch(["tatoeba"], dest=dest, base_url=server.url, attempts=1, log=lambda s: None)
    assert ds.url("tatoeba.deu-eng.eng", server.url) in str(e.value)
    assert _tree(dest) == []

    # Running it again fetches everything cleanly.
    F.fetch(["tatoeba"], dest=dest, base_url=server.url, attempts=1, log=lambda s: None)
    for fname, body in FIXTURE_FILES["tatoeba"].items():
        assert (dest / "tatoeba" / fname).read_bytes() == body
    assert _tree(dest) == ["tatoeba"] + [f"tatoeba/{f}" for f in sorted(FIXTURE_FILES["tatoeba"])]


def test_dropped_connection_is_retried_within_one_fetch(server, fixtures, tmp_path):
    ds = fixtures["mlqa_r"]
    server.drops[server.path_of(ds, "zh.json")] = 1
    lines = []
    F.fetch(["mlqa_r"], dest=tmp_path, base_url=server.url, attempts=2, retry_wait=0, log=lines.append)
    assert (tmp_path / "mlqa-r" / "zh.json").read_bytes() == FIXTURE_FILES["mlqa_r"]["zh.json"]
    assert any("connection dropped" in line and "retrying" in line for line in lines)
    assert server.requests.count(server.path_of(ds, "zh.json")) == 2


def test_404_names_the_url(server, fixtures, tmp_path):
    ds = fixtures["mlqa_r"]
    del server.routes[server.path_of(ds, "en.json")]
    dest = tmp_path / "dest"
    with pytest.raises(F.FetchError, match="HTTP 404") as e:
        F.fetch(["mlqa_r"], dest=dest, base_url=server.url, log=lambda s: None)
    assert ds.url("en.json", server.url) in str(e.value)
    assert _tree(dest) == []


def test_base_url_from_the_environment(server, fixtures, tmp_path, monkeypatch):
    monkeypatch.setenv(F.BASE_URL_ENV, server.url + "/")
    F.fetch(["tatoeba"], dest=tmp_path, log=lambda s: None)
    assert (tmp_path / "tatoeba" / "README.md").exists()
    assert F.DATASETS["tatoeba"].url("README.md").startswith(server.url + "/facebookresearch/LASER/")


def test_the_default_source_is_github_raw(monkeypatch):
    monkeypatch.delenv(F.BASE_URL_ENV)
    assert F.DATASETS["xquad_r"].url("ar.json") == (
        "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
        "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c/xquad-r/ar.json")
    assert F.DATASETS["mlqa_r"].url("LICENSE") == (
        "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
        "354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/LICENSE")
    assert F.DATASETS["tatoeba"].url("tatoeba.deu-eng.deu").endswith("/data/tatoeba/v1/tatoeba.deu-eng.deu")


# ---------------------------------------------------------------------------
# The pins
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(F.DATASETS))
def test_pins_match_the_shared_data(name):
    ds = F.DATASETS[name]
    folder = SHARED_DATA / ds.folder
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    assert sorted(p.name for p in folder.iterdir()) == sorted(ds.pins)
    for fname, sha in ds.pins.items():
        assert F.sha256_file(folder / fname) == sha, fname


@pytest.mark.parametrize("name", list(F.DATASETS))
def test_real_tables_fetch_the_shared_copies(server, tmp_path, name):
    """The real pins and URL layout, end to end, with the ../shared/data copies served as the source."""
    ds = F.DATASETS[name]
    if not (SHARED_DATA / ds.folder).is_dir():
        pytest.skip(f"no ../shared/data/{ds.folder}")
    server.serve(ds, {n: SHARED_DATA / ds.folder / n for n in ds.pins})
    F.fetch([name], dest=tmp_path, base_url=server.url, log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / ds.folder).iterdir()) == sorted(ds.pins)


# ---------------------------------------------------------------------------
# Missing data, and the CLI
# ---------------------------------------------------------------------------


@pytest.fixture
def no_shared_data(tmp_path, monkeypatch) -> Path:
    """A checkout with no ../shared/data beside it."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(config, "PROJECT_ROOT", checkout)
    return checkout


def test_missing_data_error_names_dataset_places_and_command(no_shared_data, tmp_path):
    cfg = HBTConfig(eval={"benchmarks": ["xquad_r", "tatoeba"]})
    with pytest.raises(F.MissingDataError) as e:
        F.ensure_data(cfg)
    msg = str(e.value)
    assert "xquad_r" in msg and "tatoeba" in msg and "mlqa_r" not in msg
    assert str(tmp_path / "shared" / "data" / "xquad-r") in msg
    assert str(tmp_path / "cache" / "data" / "xquad-r") in msg
    assert "hbt data fetch xquad_r tatoeba" in msg
    assert "--fetch" not in msg

    # A configured absolute path: the command fetches next to it.
    cfg = HBTConfig(eval={"benchmarks": ["mlqa_r"], "mlqa_r_path": str(tmp_path / "mine" / "mlqa-r")})
    with pytest.raises(F.MissingDataError, match=f"hbt data fetch mlqa_r --dest {tmp_path / 'mine'}"):
        F.ensure_data(cfg, train=False)


def test_cli_eval_without_fetch_fails_naming_the_command(no_shared_data, capsys):
    assert main(["eval", "eval.benchmarks=[mlqa_r]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: benchmark data not found")
    assert "hbt data fetch mlqa_r" in err and "--fetch" in err


def test_cli_study_fetch_gets_missing_benchmarks_first(server, fixtures, no_shared_data, tmp_path, monkeypatch):
    import sys
    import types

    seen = {}

    def fake_run_study(cfg, resume=False):
        seen["paths"] = [config.resolve_path(p) for p in (cfg.data.path, cfg.eval.mlqa_r_path)]

    monkeypatch.setitem(sys.modules, "hbt.study", types.SimpleNamespace(run_study=fake_run_study))
    monkeypatch.setenv(F.BASE_URL_ENV, server.url)
    argv = ["study", "data.languages=[en,de]", "eval.benchmarks=[xquad_r,mlqa_r]", "ray.num_workers=1"]
    assert main(argv + ["--fetch"]) == 0
    cache = tmp_path / "cache" / "data"
    assert seen["paths"] == [str(cache / "xquad-r"), str(cache / "mlqa-r")]
    assert not (cache / "tatoeba").exists()  # only what the config needs


def test_cli_data_fetch(server, fixtures, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(F.BASE_URL_ENV, server.url)
    assert main(["data", "fetch", "tatoeba", "--dest", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert F.DATASETS["tatoeba"].licence in out
    assert (tmp_path / "d" / "tatoeba" / "tatoeba.deu-eng.deu").exists()

    assert main(["data", "fetch", "squad"]) == 2
    assert "unknown dataset" in capsys.readouterr().err

    del server.routes[server.path_of(fixtures["xquad_r"], "de.json")]
    assert main(["data", "fetch", "xquad_r"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "HTTP 404" in err and fixtures["xquad_r"].url("de.json") in err
