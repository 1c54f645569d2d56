"""``hbt data fetch``: the benchmarks from their public sources, verified.

Three datasets, each a folder of files downloaded from a fixed commit of a
public GitHub repository (``raw.githubusercontent.com``):

- ``xquad_r``: XQuAD-R, the ``xquad-r`` folder of google-research-datasets/lareqa;
- ``mlqa_r``: MLQA-R, the ``mlqa-r`` folder of the same repository at commit
  354d67d (the folder was removed from that repository later);
- ``tatoeba``: the Tatoeba test pairs of the 36 XTREME languages, from
  facebookresearch/LASER ``data/tatoeba/v1``.

Every file is checked against a SHA-256 pinned below (computed from the
reference copies in ``../shared/data``). A dataset's files are downloaded
into a hidden staging folder in the destination and moved into
``DEST/<folder>`` one rename at a time only once every file has verified, so
a failed, corrupted or interrupted download leaves nothing half-written.

The base URL can be replaced (``base_url=`` or ``$HBT_FETCH_BASE_URL``, e.g. a
mirror with the same ``<owner>/<repo>/<commit>/<path>`` layout); the tests
point it at a server on 127.0.0.1. Only the standard library is used.

Layering: this module imports :mod:`hbt.config` only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from hbt.config import SHARED_DATA, HBTConfig, data_cache_dir, data_candidates, resolve_path

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
BASE_URL_ENV = "HBT_FETCH_BASE_URL"

Log = Callable[[str], None]


class FetchError(RuntimeError):
    """A download failed (HTTP error, dropped connection, checksum mismatch); the message names the URL."""


class MissingDataError(FileNotFoundError):
    """A configured benchmark is in none of the places searched; the message names the fetch command."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One fetchable dataset: a folder of pinned files at a fixed commit of a GitHub repository."""

    name: str  # the CLI name: xquad_r, mlqa_r, tatoeba
    title: str
    folder: str  # the local folder name (the last part of the default config path)
    repo: str  # owner/name on GitHub
    commit: str
    remote_dir: str  # the folder in the repository
    licence: str
    pins: dict[str, str]  # local file name -> SHA-256
    remote_names: dict[str, str] = field(default_factory=dict)  # file name -> repo path, when not remote_dir/name

    def remote_path(self, name: str) -> str:
        """The file's path inside the repository."""
        return self.remote_names.get(name, f"{self.remote_dir}/{name}")

    def url(self, name: str, base_url: str | None = None) -> str:
        """The download URL of one file (``base_url``, else ``$HBT_FETCH_BASE_URL``, else GitHub raw)."""
        base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.repo}/{self.commit}/{self.remote_path(name)}"

    @property
    def source(self) -> str:
        """The human-readable source (repository, folder, commit)."""
        return f"https://github.com/{self.repo}/tree/{self.commit}/{self.remote_dir}"


# ---------------------------------------------------------------------------
# The sources and their pins (SHA-256 of the reference copies in ../shared/data)
# ---------------------------------------------------------------------------

LAREQA = "google-research-datasets/lareqa"
# The newest LAReQA commit (master): xquad-r/ as published, the licence at the repository root.
LAREQA_XQUAD_R_COMMIT = "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c"
# The last LAReQA commit holding mlqa-r/ (removed by the next one, b91469b).
LAREQA_MLQA_R_COMMIT = "354d67d1cd066854cdfbf5ad0e6105528976141d"
LASER = "facebookresearch/LASER"
LASER_COMMIT = "74bc6ae7ffb7cba670fe0f428d0ede9f666fb821"

_XQUAD_R_PINS = {
    "LICENSE": "25ddafc153e4cfdafd70729574ef1b44348e1814709e57680d55347038d3f92c",
    "ar.json": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
    "de.json": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
    "el.json": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
    "en.json": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
    "es.json": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
    "hi.json": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
    "ru.json": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
    "th.json": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
    "tr.json": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
    "vi.json": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
    "zh.json": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
}

_MLQA_R_PINS = {
    "LICENSE": "336255dc30193e8e15d689d9481bb05673d89055718f3a96923a7ffb99adbbaf",
    "ar.json": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
    "de.json": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
    "en.json": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
    "es.json": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
    "hi.json": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
    "vi.json": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
    "zh.json": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
}

# tatoeba.<xxx>-eng.<xxx> and tatoeba.<xxx>-eng.eng for the 36 XTREME languages.
_TATOEBA_PINS = {
    "README.md": "5fbce42e75e8f2200dd36ed90279aa10a06ed6db2e34a7fef7f55e99c53af467",
    "tatoeba.afr-eng.afr": "7bb9e073ad8422d6bfdec7c9ebdcef8ac486e72b237200e447923a8b921a0a56",
    "tatoeba.afr-eng.eng": "0b700c125efb4030b4cc50d9d765d5884afc24f39296f29b028a1b2a8512034f",
    "tatoeba.ara-eng.ara": "e67a0ae072b79cd9e8eb09f166c3bc0b23488d39f5720f2ee0a8350ae17b719f",
    "tatoeba.ara-eng.eng": "3c11838c963f598a52dcf2f452b666353538257001db5c59c3a5f54a999b336b",
    "tatoeba.ben-eng.ben": "ac3385695d6a6c7e5d18e38ad4b8b7d3780f3df23dd0ff3f539071b8269a8613",
    "tatoeba.ben-eng.eng": "67fbe75fec549d436c3356b6d6f8dd53179b6a908661b5d507d28c7fee83350e",
    "tatoeba.bul-eng.bul": "f9fa90cf3599d8c87f7a6ed22f5d648e3ce6687c705656a8c8ea088d891f79d5",
    "tatoeba.bul-eng.eng": "4b03b3b52ffb7cf4286e0c4453c90910a3021546f160bdf0e4d39d1f45bfbc0b",
    "tatoeba.cmn-eng.cmn": "965d033966fcd186c89741ad49ab4b0a0b2bbd33e02666635ff3b2be23c1ac1f",
    "tatoeba.cmn-eng.eng": "29ba36232488f5806aceccac57c59c5e750ddd08edb40eef417e3ada9ff9a239",
    "tatoeba.deu-eng.deu": "edfa6f75a42554df388f45891735d5e4214158a99def4b73b5908af4a3054551",
    "tatoeba.deu-eng.eng": "eb9cc83a42f2c4b22f310d05311207e41abb56c2a084666cac3ee0f84d2d0b84",
    "tatoeba.ell-eng.ell": "4fb3d3d30bdafd15100dfad5c4680f8f2ed5ca87ed0a6122e2fe2aa21fee65e8",
    "tatoeba.ell-eng.eng": "1f630710e718e2f85a4e757d3c7f3d6e78ded0b25c99653b4c552138318d9ffe",
    "tatoeba.est-eng.eng": "bb033b10596178452aecf2d97ad25580251375e7d224d8b38dad3d93d69b1e4f",
    "tatoeba.est-eng.est": "94856999ef35e5357502d7ecf50419d0108b99270e507d9c57f8b283bd1be9c5",
    "tatoeba.eus-eng.eng": "1e80f0174ad544697fd69ddcf21287ca10c5e3cacba2fc42bf1d68c460d14ba2",
    "tatoeba.eus-eng.eus": "4255fb70a6c268b09fcc59a9b308f0fcaaf45ef45e66fc55bf3c80eac4d8c97b",
    "tatoeba.fin-eng.eng": "322e610359f4d24852e673bbe4524d52c26dbf980aca0760e95c66dc21ecd504",
    "tatoeba.fin-eng.fin": "8db3c734f755d578445947f1182f40faf2a9a0eca37561dd248717c088802d60",
    "tatoeba.fra-eng.eng": "5634220f8a26a9a23b84753a9aec0b0832e6bdaa9da3f83e0bd84c928c3f46e3",
    "tatoeba.fra-eng.fra": "644172ff9642fefa9e41c29b7d6f44196518e84350dc44d4992e943c0cca92b6",
    "tatoeba.heb-eng.eng": "73c27ed0f76c1d2da199230f05489749e10bb67ab879c6dfee8ca9807d6bd99c",
    "tatoeba.heb-eng.heb": "4a07ca4b8a6fb7ab499791573a2454730f47acbe209359d7b9372a9f6094a102",
    "tatoeba.hin-eng.eng": "adfce2269a55dbac69b25c0f4f6eb89e0f9383165485925a2e042e61b9480562",
    "tatoeba.hin-eng.hin": "15e4fb0a394be4438319f1d6955d1aea226e2a8c5ad38798b23b76ae43d742ed",
    "tatoeba.hun-eng.eng": "5323266e91ddee67ed1ae00d6bbac0cdf3d37749d1b2da3459bf0d424bc71383",
    "tatoeba.hun-eng.hun": "56bd0682be8c1db6568313650b3310d641cc8d0019d12dd7caf201302350eeac",
    "tatoeba.ind-eng.eng": "62a3f5127b60eb3526b8fa3994a68fa1a1f114f3a395307a8808a3517c05ffc5",
    "tatoeba.ind-eng.ind": "4f03cd70cba071f746eacd3ebf6b60fd5a8377ce18b4cc52edec6721f05f352a",
    "tatoeba.ita-eng.eng": "738bf8f981e42d285f4f08bc09238782d285b02050e6e95287aa4e998bb7b24b",
    "tatoeba.ita-eng.ita": "9b3f369d0ed92273b46dd3b983721636e3d15024ce7125f5103229249c386d26",
    "tatoeba.jav-eng.eng": "172776353690f6c047ea21da969fa6979980d692fff1cfbac17eb25851423760",
    "tatoeba.jav-eng.jav": "ad88399db8f94c2a040aa53e7e862225964fac9308a3beb3d5b38f3eca2f827f",
    "tatoeba.jpn-eng.eng": "b42129b34e1bf225ccc25fc00e532a6113af98adbc6605b93021bd8aadeb68b6",
    "tatoeba.jpn-eng.jpn": "56040bd6949170a631039d9f8f4c6440db8761b0065c9686feba55c99a320d46",
    "tatoeba.kat-eng.eng": "d70a14aa64fd7c6b545f11aea754a632e1cbecb91af27fcf6a98a8449a48a8e7",
    "tatoeba.kat-eng.kat": "6ef69b5efbf355597ed91eb355b33a5f524bdf0875dbeaaccf6375badc20e29b",
    "tatoeba.kaz-eng.eng": "0ab684e7032c6520540d5785adf00ef206d097221d0dd4dc9bcaabd64068e10d",
    "tatoeba.kaz-eng.kaz": "f20c682582a80b6aa10f3b933db93bc314449b554ce611e263bc75990b319aef",
    "tatoeba.kor-eng.eng": "f900cf3c9b72ed5a400e1804702863ff3df00be58eb060902e02285d0e68fab3",
    "tatoeba.kor-eng.kor": "e550c84184ec35b1a0dab3154284719511a21746e53c40f46eb6ab08179e9188",
    "tatoeba.mal-eng.eng": "4d80cdbb844cd4e33f874e5dc45c1cdda4f80998034448f7eb56b8b6532a6622",
    "tatoeba.mal-eng.mal": "1a896f54f85a454fb0123864049c65921ae9dfd0cafda6deef8060f0104d965e",
    "tatoeba.mar-eng.eng": "709d09b697dca053c814b9d525b72cb47cb011aa860c6598f3e2b1b3dd1280dd",
    "tatoeba.mar-eng.mar": "b2931584fbe62062beb97cc939e4d208ace5ee56f15808860ab14e130fd3c576",
    "tatoeba.nld-eng.eng": "3b8836749df573a53235b85ed6771f31bf2de428f520d2d6a1dd94b61b4ef057",
    "tatoeba.nld-eng.nld": "d564d4ce1c621ccaefdbe9f5cb08eacccc7bf2a0b58666303e84ca9c7973bdb7",
    "tatoeba.pes-eng.eng": "b5c6cf8c8d93ff8f2fe26b53f3ee29b62db9c6f7dcddcb086ba48953f4ce926b",
    "tatoeba.pes-eng.pes": "f1553713723491fe5876e1060b18fb4abf0c77be3ba06db2e3307e83aedbbb32",
    "tatoeba.por-eng.eng": "deb4568cfb7b7cbbc060a7fe97c4639fb4680842f4fcd28df791ffdbb753855a",
    "tatoeba.por-eng.por": "b0c926a232c9889a87a1a970f9399c5618c2d95baf204321e9da794c0aec16f5",
    "tatoeba.rus-eng.eng": "7b26f52d6085b7c4944d6f5f6f5b6e1932085b42112f1444db515ce59e878fb8",
    "tatoeba.rus-eng.rus": "446ff2cae66053c2277d9735b2c2df6b786cae258385f7ade7bed68d8835c6a0",
    "tatoeba.spa-eng.eng": "89e4470f4572040b1ca94b3edad97dcd8bd2f0141f072e12933b8659dadf917d",
    "tatoeba.spa-eng.spa": "f9628cea40481e8251f0999718bd893cff0f261752f5e526b3bc20284e2ca018",
    "tatoeba.swh-eng.eng": "e8539647caff9e329776ae863b6224d432923c6e4e9256b9df92ca58ff282eac",
    "tatoeba.swh-eng.swh": "1c672915446c336cc378676e6dbf91eb54d27bbfd0c61563d349265bc6374753",
    "tatoeba.tam-eng.eng": "e7c5106acdd100214a161970b2a5c31e7386e5b6a963e3d3afdf30412c90ac53",
    "tatoeba.tam-eng.tam": "bde87fb1ddedccf6c7a2b70ffdd19a959a573c113c2e7a041c4b623fb2170bde",
    "tatoeba.tel-eng.eng": "1efc2ef57d9b1ecebfc4baa45e86fd793e38473304e9c043aebabc3a1b29a294",
    "tatoeba.tel-eng.tel": "7e1a1bcd106cce650a09e2f042f1354b55b29bea2bcfa86554dfa0ad12ce8976",
    "tatoeba.tgl-eng.eng": "e7c9beda3f3072a968a34a7226a66d1ebf1dcb33cf002805dc752f80a7c620ae",
    "tatoeba.tgl-eng.tgl": "f99165dc05190b99f6574fe24db884ff85d111612a25e7a37323f001aafc2a6e",
    "tatoeba.tha-eng.eng": "2881c82d2c5fa59cf0a68bc9e012f5e0b0a716f7357cbecf77c247efc2fd7294",
    "tatoeba.tha-eng.tha": "65c7b3c01a56a1ac8971e72e0ea8e74a027718dc84044d8802c0ab36395a3156",
    "tatoeba.tur-eng.eng": "a768df7dd3d1344f872a458b32c3a65e24f8381826ccb16ba6677426176c8121",
    "tatoeba.tur-eng.tur": "1ffa0acc006018b3105abda41a4d4ca42f3c122964a49b71793546367b079a86",
    "tatoeba.urd-eng.eng": "dab35fda3f73b3fd86b6b9f9f9f6242430961aa5d1ac247adbc646867df79cec",
    "tatoeba.urd-eng.urd": "2efc22dc61885a9454aeeee68c8b841c7f9138d53ba644a82308bd210140450b",
    "tatoeba.vie-eng.eng": "a1f60bd8ae6c42224a4c050d2aa1ff4242d14827d64d7831e96ecf2b2c367f5f",
    "tatoeba.vie-eng.vie": "6dbb02d778b0bfc8678cd85f87db76de55dd7e409a26fe32ad42d50e0f1fff77",
}

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="xquad_r", title="XQuAD-R", folder="xquad-r", repo=LAREQA, commit=LAREQA_XQUAD_R_COMMIT,
            remote_dir="xquad-r", pins=_XQUAD_R_PINS, remote_names={"LICENSE": "LICENSE"},
            licence="CC BY-SA 4.0 (xquad-r/LICENSE; https://creativecommons.org/licenses/by-sa/4.0/legalcode)",
        ),
        Dataset(
            name="mlqa_r", title="MLQA-R", folder="mlqa-r", repo=LAREQA, commit=LAREQA_MLQA_R_COMMIT,
            remote_dir="mlqa-r", pins=_MLQA_R_PINS,
            licence="CC BY-NC 4.0 as shipped by LAReQA (mlqa-r/LICENSE: non-commercial use only); "
            "MLQA itself is CC BY-SA 3.0",
        ),
        Dataset(
            name="tatoeba", title="Tatoeba (36 XTREME languages)", folder="tatoeba", repo=LASER,
            commit=LASER_COMMIT, remote_dir="data/tatoeba/v1", pins=_TATOEBA_PINS,
            licence="the Tatoeba corpus terms of use (CC BY 2.0 FR; https://tatoeba.org/eng/terms_of_use); "
            "see tatoeba/README.md",
        ),
    )
}


# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth another attempt (dropped connection, timeout, HTTP 5xx)."""


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _download_once(url: str, out_path: Path, sha256: str, timeout: float) -> int:
    h, n = hashlib.sha256(), 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "hbt-data-fetch"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(out_path, "wb") as out:
            expected = resp.headers.get("Content-Length")
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
            if expected is not None and n != int(expected):
                raise _Transient(f"{url}: connection dropped after {n} of {expected} bytes")
            out.flush()
            os.fsync(out.fileno())
    except urllib.error.HTTPError as e:
        msg = f"{url}: HTTP {e.code} {e.reason}"
        if e.code >= 500 or e.code == 429:
            raise _Transient(msg) from None
        raise FetchError(msg) from None
    except urllib.error.URLError as e:
        raise _Transient(f"{url}: {e.reason}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise _Transient(f"{url}: connection dropped after {n} bytes ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise FetchError(f"cannot write {out_path}: {e}") from None
    got = h.hexdigest()
    if got != sha256:
        raise FetchError(f"{url}: SHA-256 mismatch ({n} bytes): got {got}, pinned {sha256}")
    return n


def _download(url: str, out_path: Path, sha256: str, *, attempts: int, retry_wait: float, timeout: float,
              log: Log) -> int:
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, out_path, sha256, timeout)
        except _Transient as e:
            out_path.unlink(missing_ok=True)
            if attempt == attempts:
                raise FetchError(f"{e} (attempt {attempt} of {attempts})") from None
            log(f"  {e}; retrying ({attempt + 1} of {attempts})")
            time.sleep(retry_wait * attempt)
    raise AssertionError("unreachable")


def fetch_dataset(ds: Dataset, dest: str | os.PathLike, *, base_url: str | None = None, attempts: int = 3,
                  retry_wait: float = 2.0, timeout: float = 60.0, log: Log = print) -> Path:
    """Downloads one dataset into ``dest/<ds.folder>``, verifying every file.

    Files already there with the pinned checksum are kept. The others are
    downloaded into a hidden staging folder in ``dest`` and renamed into place
    only once every one of them has verified; on any failure the staging
    folder is removed, so nothing half-written is left.

    Args:
        ds: the dataset.
        dest: the parent folder.
        base_url: replaces ``https://raw.githubusercontent.com`` (default:
            ``$HBT_FETCH_BASE_URL`` when set).
        attempts: tries per file on a dropped connection, a timeout or an HTTP 5xx.
        retry_wait: seconds before the second try (times the try number after).
        timeout: socket timeout in seconds.
        log: where progress and the licence go.

    Returns:
        ``dest/<ds.folder>``.

    Raises:
        FetchError: an HTTP error (the message names the URL), a connection
            that kept dropping, a checksum mismatch, or an unwritable ``dest``.
    """
    dest = Path(dest).expanduser().resolve()
    target = dest / ds.folder
    todo = [name for name, sha in ds.pins.items() if not _verified(target / name, sha)]
    log(f"{ds.name}: {ds.title}, {len(ds.pins)} files from {ds.source} -> {target}")
    if not todo:
        log("  already present, every file verified")
    else:
        try:
            dest.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{ds.folder}.fetch-", dir=dest))
        except OSError as e:
            raise FetchError(f"cannot write to {dest}: {e}") from None
        try:
            total = 0
            for name in todo:
                total += _download(ds.url(name, base_url), staging / name, ds.pins[name], attempts=attempts,
                                   retry_wait=retry_wait, timeout=timeout, log=log)
            target.mkdir(exist_ok=True)
            for name in todo:
                os.replace(staging / name, target / name)
        except FetchError as e:
            raise FetchError(f"{e}\nnothing was written to {target}; fetch again to retry") from None
        except OSError as e:
            raise FetchError(f"cannot write to {target}: {e}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"  {len(todo)} file(s), {total / 1e6:.1f} MB, SHA-256 verified")
    log(f"  licence: {ds.licence}")
    return target


def fetch(names: Iterable[str] | None = None, dest: str | os.PathLike | None = None, **kwargs) -> dict[str, Path]:
    """Downloads the named datasets (default: all) into ``dest`` (default: the fetch cache).

    Args:
        names: keys of :data:`DATASETS`.
        dest: the parent folder; default :func:`hbt.config.data_cache_dir`.
        **kwargs: passed to :func:`fetch_dataset`.

    Returns:
        ``{name: folder}``.

    Raises:
        ValueError: an unknown dataset name.
        FetchError: see :func:`fetch_dataset`.
    """
    names = list(dict.fromkeys(names or DATASETS))
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {list(DATASETS)}")
    dest = Path(dest) if dest is not None else data_cache_dir()
    return {n: fetch_dataset(DATASETS[n], dest, **kwargs) for n in names}


# ---------------------------------------------------------------------------
# What a config needs, and the error when it is missing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Missing:
    """A configured benchmark found in none of the places searched."""

    dataset: str
    key: str  # the config key, e.g. eval.xquad_r_path
    path: str  # the configured path
    searched: tuple[str, ...]
    dest: str  # where `hbt data fetch` must put it for the path to find it


_EVAL_KEYS = {"xquad_r": "xquad_r_path", "mlqa_r": "mlqa_r_path", "tatoeba": "tatoeba_path"}


def configured_datasets(cfg: HBTConfig, train: bool = True, evaluate: bool = True) -> list[tuple[str, str, str]]:
    """The fetchable datasets a config reads, as ``(dataset, config key, path)``.

    ``data.path`` (XQuAD format) when training, the selected benchmarks'
    paths when evaluating; only paths whose last part is a dataset's folder
    name (``.../xquad-r``, ``.../mlqa-r``, ``.../tatoeba``) count.
    """
    by_folder = {d.folder: d.name for d in DATASETS.values()}
    items: list[tuple[str, str]] = []
    if train and cfg.data.format == "xquad":
        items.append(("data.path", cfg.data.path))
    if evaluate:
        items += [(f"eval.{_EVAL_KEYS[b]}", getattr(cfg.eval, _EVAL_KEYS[b]))
                  for b in dict.fromkeys(cfg.eval.benchmarks) if b in _EVAL_KEYS]
    out = []
    for key, path in items:
        name = by_folder.get(Path(path.rstrip("/")).name)
        if name and "://" not in path:
            out.append((name, key, path))
    return out


def fetch_dest(path: str) -> Path:
    """Where ``hbt data fetch`` must put a dataset so that the configured ``path`` finds it."""
    norm = os.path.normpath(path)
    if not os.path.isabs(path) and norm.startswith(os.path.normpath(SHARED_DATA) + os.sep):
        return data_cache_dir() / os.path.dirname(norm[len(os.path.normpath(SHARED_DATA)) + 1:])
    return Path(resolve_path(path)).parent


def missing_data(cfg: HBTConfig, train: bool = True, evaluate: bool = True) -> list[Missing]:
    """The configured datasets that are in none of the places searched."""
    out = []
    for name, key, path in configured_datasets(cfg, train, evaluate):
        if Path(resolve_path(path)).exists():
            continue
        searched = [path] if os.path.isabs(path) else [str(p) for p in data_candidates(path)]
        out.append(Missing(name, key, path, tuple(searched), str(fetch_dest(path))))
    return out


def fetch_command(missing: list[Missing]) -> str:
    """The ``hbt data fetch`` command(s) that get the missing datasets where the config looks."""
    by_dest: dict[str, list[str]] = {}
    for m in missing:
        names = by_dest.setdefault(m.dest, [])
        if m.dataset not in names:
            names.append(m.dataset)
    cache = str(data_cache_dir())
    return "; ".join(
        "hbt data fetch " + " ".join(names) + ("" if dest == cache else f" --dest {dest}")
        for dest, names in by_dest.items()
    )


def missing_message(missing: list[Missing], offer_flag: bool = False) -> str:
    """The error for missing datasets: each dataset, the places searched, the fetch command."""
    lines = ["benchmark data not found:"]
    keys: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for m in missing:
        keys.setdefault((m.dataset, m.path, m.searched), []).append(m.key)
    for (name, path, searched), ks in keys.items():
        lines.append(f"  {name} ({DATASETS[name].title}) for {', '.join(ks)} = {path}; searched: {', '.join(searched)}")
    lines.append(f"get it with: {fetch_command(missing)}" + ("  (or rerun this command with --fetch)" if offer_flag else ""))
    return "\n".join(lines)


def ensure_data(cfg: HBTConfig, *, train: bool = True, evaluate: bool = True, fetch_missing: bool = False,
                offer_flag: bool = False, log: Log | None = None, **kwargs) -> list[str]:
    """Checks that the datasets a config reads are present; fetches them only when asked.

    Args:
        cfg: the config.
        train: check ``data.path``.
        evaluate: check the benchmarks in ``eval.benchmarks``.
        fetch_missing: download what is missing (to :func:`fetch_dest` of each path).
        offer_flag: the error mentions ``--fetch``.
        log: progress output (default: stderr).
        **kwargs: passed to :func:`fetch_dataset`.

    Returns:
        The names of the datasets fetched (empty when all were present).

    Raises:
        MissingDataError: data is missing and ``fetch_missing`` is false.
        FetchError: a download failed.
    """
    missing = missing_data(cfg, train, evaluate)
    if not missing:
        return []
    if not fetch_missing:
        raise MissingDataError(missing_message(missing, offer_flag))
    log = log or (lambda s: print(s, file=sys.stderr))
    done: set[tuple[str, str]] = set()
    for m in missing:
        if (m.dataset, m.dest) not in done:
            fetch_dataset(DATASETS[m.dataset], m.dest, log=log, **kwargs)
            done.add((m.dataset, m.dest))
    still = missing_data(cfg, train, evaluate)
    if still:
        raise MissingDataError(missing_message(still))
    return list(dict.fromkeys(m.dataset for m in missing))
