"""SPICE kernels: the manifest, discovery, selection by real coverage, scoped loading, download.

Nothing here loads a kernel at import time.  The pipeline does::

    kdir, source = resolve_kernel_dir(flag)        # --kernels > $JUNOPROC_KERNELS > config > cache
    kset = select_kernels(kdir, et_start, et_stop, target="JUPITER", need_ck=False)
    with furnished(kset):                          # furnsh on enter, unload exactly those on exit
        ...

Selection never trusts file names for coverage: SPKs and CKs are chosen with ``spkcov`` /
``ckcov`` over the files present.  Names only propose which mission kernels to *download*
(``fetch_kernels``); after download the real coverage is checked again.

Load order (later files take priority in SPICE): text kernels (LSK, PCK, FK, IK addenda,
IK, SCLK), then SPKs (satellite ephemerides, unknown, nominal, predicted, reconstructed;
newest last), then CKs in the same quality order.  The real IK is loaded after any ISIS
addendum so the addendum can only add keys; keys it would change are reported in
``KernelSet.notes``.

SPICE's kernel pool is process-global and not thread-safe: use one ``furnished`` block per
process (the pipeline uses processes, not threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import spiceypy as sp
from spiceypy.utils.exceptions import SpiceyError

from .errors import (
    JunoprocError,
    KernelCoverageError,
    KernelDownloadError,
    KernelError,
    KernelMissingError,
    MissingMetadataError,
    UnknownTargetError,
)
from .paths import cache_dir

log = logging.getLogger(__name__)

#: Environment variable naming the kernel folder (second in precedence after --kernels).
KERNELS_ENV = "JUNOPROC_KERNELS"
#: Environment variable overriding the NAIF base URL (a mirror or a local test server).
NAIF_URL_ENV = "JUNOPROC_NAIF_URL"
#: Environment variable naming the config file (default ~/.config/junoproc/config.toml).
CONFIG_ENV = "JUNOPROC_CONFIG"
#: Seconds added before and after an image's span for the SPK/CK coverage test.  Small on
#: purpose: NAIF slices (and the pj01 sample) end ~2 s around an image; light time is
#: checked separately by evaluating the LT+S state of the target at the span's ends.
DEFAULT_MARGIN_S = 1.0

#: Text kernel kinds, in load order.
TEXT_KINDS = ("lsk", "pck", "fk", "ik", "sclk")
#: SPK/CK quality -> priority (higher loads later, so it wins where files overlap).
QUALITY_RANK = {"satellite": 0, "unknown": 1, "nominal": 2, "predicted": 3, "reconstructed": 4}

_EXT_KIND = {
    ".tls": "lsk", ".tpc": "pck", ".tf": "fk", ".ti": "ik", ".tsc": "sclk", ".tm": "mk",
    ".bsp": "spk", ".bc": "ck", ".bpc": "bpck", ".bds": "dsk",
}
_BINARY_EXTS = {".bsp", ".bc", ".bpc", ".bds"}
_DAF_KIND = {"DAF/SPK": "spk", "DAF/CK": "ck", "DAF/PCK": "bpck", "DAS/DSK": "dsk"}
_KPL_KIND = {"LSK": "lsk", "PCK": "pck", "FK": "fk", "IK": "ik", "SCLK": "sclk", "MK": "mk"}
_MAX_TEXT_KERNEL_BYTES = 32 * 2**20
#: CSPICE's limit on a file name (FILEN).
_SPICE_MAX_PATH = 255
#: Cells for spkcov/ckcov windows (doubles: two per interval).
_WINDOW_CELL_SIZE = 200_000

# Names (not numbers: the numbers come from the kernels) of the Juno objects checked.
_SPACECRAFT_BODY = "JUNO"
_SPACECRAFT_FRAME = "JUNO_SPACECRAFT"
_CAMERA_FRAME = "JUNO_JUNOCAM"

_FETCH_HINT = "run `junoproc kernels fetch` or pass --kernels DIR"


# ----------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenericKernel:
    """A pinned kernel: kind, NAIF path relative to the base URL, sha256, size."""

    kind: str
    name: str
    path: str
    sha256: str
    size_bytes: int
    what: str

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"


@dataclass(frozen=True)
class MissionRule:
    """A mission kernel naming rule: which listing, which names, which quality."""

    kind: str
    quality: str
    listing: str
    regex: str

    def match(self, name: str) -> re.Match[str] | None:
        return re.match(self.regex, name)


@dataclass(frozen=True)
class KernelManifest:
    base_url: str
    generic: tuple[GenericKernel, ...]
    mission: tuple[MissionRule, ...]
    source: str

    def generic_for(self, kind: str) -> GenericKernel:
        for entry in self.generic:
            if entry.kind == kind:
                return entry
        raise KeyError(kind)


MANIFEST_RESOURCE = "data/kernel_manifest.toml"


def load_manifest() -> KernelManifest:
    """The kernel manifest shipped in the package (``junoproc/data/kernel_manifest.toml``)."""
    res = resources.files("junoproc").joinpath(MANIFEST_RESOURCE)
    where = str(res)
    try:
        data = tomllib.loads(res.read_text(encoding="utf-8"))
        generic = tuple(
            GenericKernel(
                kind=e["kind"], name=e["name"], path=e["path"], sha256=e["sha256"].lower(),
                size_bytes=int(e["bytes"]), what=e.get("what", ""),
            )
            for e in data["generic"]
        )
        mission = tuple(
            MissionRule(kind=r["kind"], quality=r["quality"], listing=r["listing"], regex=r["regex"])
            for r in data["mission"]
        )
        for rule in mission:
            re.compile(rule.regex)
        return KernelManifest(str(data["base_url"]), generic, mission, where)
    except (OSError, KeyError, TypeError, ValueError, re.error) as err:
        raise KernelError(f"kernel manifest unreadable: {err}", path=where,
                          hint="reinstall junoproc") from err


def naif_base_url(manifest: KernelManifest | None = None) -> str:
    """``$JUNOPROC_NAIF_URL`` or the manifest's base URL (NAIF), without trailing slash."""
    env = os.environ.get(NAIF_URL_ENV, "").strip()
    if env:
        return env.rstrip("/")
    return (manifest or load_manifest()).base_url.rstrip("/")


# ----------------------------------------------------------------------------------------
# Where the kernels are: --kernels > $JUNOPROC_KERNELS > config kernels.dir
#                        > a kernels/ folder beside the data > cache
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelDirSource:
    """Which rule of the precedence chose the kernel folder."""

    kind: Literal["flag", "env", "config", "beside", "cache", "argument"]
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == "flag":
            return "--kernels flag"
        if self.kind == "env":
            return f"${KERNELS_ENV}"
        if self.kind == "config":
            return f"config file {self.detail} (kernels.dir)"
        if self.kind == "beside":
            return f"kernels folder beside the data ({self.detail})"
        if self.kind == "cache":
            return f"cache folder (no --kernels, no ${KERNELS_ENV}, no kernels.dir in {self.detail})"
        return self.detail or "given by the caller"


def config_path() -> Path:
    """``$JUNOPROC_CONFIG`` or ``${XDG_CONFIG_HOME:-~/.config}/junoproc/config.toml``."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "junoproc" / "config.toml"


def _config_kernel_dir(cfg: Path) -> Path | None:
    if not cfg.is_file():
        return None
    try:
        data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise KernelError(f"config file unreadable: {err}", path=cfg,
                          hint="fix the TOML or remove the file") from err
    section = data.get("kernels")
    value = section.get("dir") if isinstance(section, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise KernelError("kernels.dir must be a folder path (string)", path=cfg,
                          hint='write [kernels] dir = "/path/to/kernels"')
    path = Path(value).expanduser()
    return path if path.is_absolute() else (cfg.parent / path)


def default_kernel_cache() -> Path:
    """Where downloaded kernels go when nothing else is configured."""
    return cache_dir() / "kernels"


#: How many folders up from the data a ``kernels/`` folder is looked for (DIR, its parent,
#: its grandparent: ``data/perijove44`` finds ``data/kernels``).
BESIDE_DATA_LEVELS = 3


def kernels_beside(data: str | os.PathLike[str]) -> Path | None:
    """The first ``kernels/`` folder holding a kernel file in ``data`` (a folder or a file's
    folder) or up to :data:`BESIDE_DATA_LEVELS` - 1 folders above it, else None."""
    here = Path(data).expanduser().absolute()
    if not here.is_dir():
        here = here.parent
    for folder in [here, *here.parents][:BESIDE_DATA_LEVELS]:
        candidate = folder / "kernels"
        if candidate.is_dir() and any(
            f.suffix.lower() in _EXT_KIND for f in candidate.rglob("*") if f.is_file()
        ):
            return candidate
    return None


def resolve_kernel_dir(
    flag: str | os.PathLike[str] | None = None, *, must_exist: bool = True,
    data: str | os.PathLike[str] | None = None,
) -> tuple[Path, KernelDirSource]:
    """The kernel folder and which rule chose it.

    Precedence: ``--kernels`` flag > ``$JUNOPROC_KERNELS`` > config file key
    ``kernels.dir`` (``~/.config/junoproc/config.toml``, or ``$JUNOPROC_CONFIG``; a relative
    path is relative to the file) > a ``kernels/`` folder beside the ``data`` being processed
    (see :func:`kernels_beside`; only when ``data`` is given) > the cache folder
    (``junoproc.paths.cache_dir()/kernels``, which may not exist yet).  A folder named by the
    flag, the variable or the config must exist unless ``must_exist`` is False (a download
    destination).
    """
    cfg = config_path()
    chosen: tuple[Path, KernelDirSource] | None = None
    if flag is not None and str(flag).strip():
        chosen = (Path(flag).expanduser(), KernelDirSource("flag", str(flag)))
    elif os.environ.get(KERNELS_ENV, "").strip():
        env = os.environ[KERNELS_ENV].strip()
        chosen = (Path(env).expanduser(), KernelDirSource("env", env))
    else:
        from_cfg = _config_kernel_dir(cfg)
        if from_cfg is not None:
            chosen = (from_cfg, KernelDirSource("config", str(cfg)))
    if chosen is None and data is not None:
        beside = kernels_beside(data)
        if beside is not None:
            return beside.resolve(), KernelDirSource("beside", str(beside))
    if chosen is None:
        return default_kernel_cache(), KernelDirSource("cache", str(cfg))
    path, source = chosen
    if must_exist and not path.is_dir():
        raise KernelMissingError(
            f"kernel folder does not exist (chosen by {source})", path=path,
            hint="pass an existing folder with --kernels DIR, or run `junoproc kernels fetch`",
        )
    return path.resolve() if path.exists() else path.absolute(), source


# ----------------------------------------------------------------------------------------
# Discovery and classification
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyCoverage:
    """Coverage of one SPK body or CK instrument id: TDB seconds past J2000 intervals."""

    object_id: int
    intervals_et: tuple[tuple[float, float], ...]

    @property
    def span_et(self) -> tuple[float, float] | None:
        if not self.intervals_et:
            return None
        return self.intervals_et[0][0], self.intervals_et[-1][1]


@dataclass(frozen=True)
class KernelFile:
    """One kernel file found in a folder.

    ``kind``: lsk, pck, fk, ik, sclk, spk, ck (used); mk, bpck, dsk (listed, not loaded);
    unusable (a kernel extension whose content is not a loadable kernel; see ``note``).
    ``quality``: text kernels "primary" or "addendum" (an IK without a KPL/ header, like
    ISIS's junoAddendum005.ti); SPK/CK "reconstructed", "predicted", "nominal",
    "satellite" or "unknown" (from the manifest's naming rules).
    """

    path: Path
    kind: str
    quality: str = "primary"
    header: str = ""
    coverage: tuple[BodyCoverage, ...] = ()
    sha256: str = ""
    note: str = ""
    #: The naming rule's (created, version) numbers, to order files of equal quality.
    name_order: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    def intervals(self, object_id: int) -> tuple[tuple[float, float], ...]:
        for cov in self.coverage:
            if cov.object_id == object_id:
                return cov.intervals_et
        return ()

    def intersects(self, lo_et: float, hi_et: float, object_id: int | None = None) -> bool:
        for cov in self.coverage:
            if object_id is not None and cov.object_id != object_id:
                continue
            if any(a <= hi_et and b >= lo_et for a, b in cov.intervals_et):
                return True
        return False


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file (cached by path, size and mtime)."""
    p = Path(path)
    key = _file_key(p)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _name_numbers(match: re.Match[str]) -> tuple[int, ...]:
    groups = match.groupdict()
    return tuple(int(groups[k]) if groups.get(k) else 0 for k in ("created", "version"))


def _mission_quality(name: str, kind: str, manifest: KernelManifest) -> tuple[str, tuple[int, ...]]:
    for rule in manifest.mission:
        if rule.kind != kind:
            continue
        m = rule.match(name)
        if m:
            return rule.quality, _name_numbers(m)
    return "unknown", ()


def _classify(path: Path, manifest: KernelManifest) -> KernelFile | None:
    """Kind from extension + content (DAF id word, KPL/ header, \\begindata)."""
    ext = path.suffix.lower()
    ext_kind = _EXT_KIND.get(ext)
    if ext_kind is None:
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as err:
        return KernelFile(path, "unusable", note=f"unreadable: {err.strerror}")
    id_word = head.decode("latin-1").strip()
    if id_word in _DAF_KIND or id_word == "NAIF/DAF":
        kind = _DAF_KIND.get(id_word, ext_kind if ext in _BINARY_EXTS else "unusable")
        if kind in ("spk", "ck"):
            quality, order = _mission_quality(path.name, kind, manifest)
            return KernelFile(path, kind, quality, header=id_word, name_order=order)
        return KernelFile(path, kind, "primary", header=id_word)
    if path.stat().st_size > _MAX_TEXT_KERNEL_BYTES:
        return KernelFile(path, "unusable", note="not a DAF file and too large for a text kernel")
    text = path.read_bytes().decode("latin-1")
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if first.startswith("DAFETF") or first.startswith("DASETF"):
        return KernelFile(path, "unusable", note="SPICE transfer format: convert with NAIF's tobin")
    has_data = re.search(r"^[ \t]*\\begindata[ \t]*\r?$", text, re.M) is not None
    if first.upper().startswith("KPL/"):
        kpl_kind = _KPL_KIND.get(first[4:].strip().upper())
        if kpl_kind is None or not has_data:
            return KernelFile(path, "unusable", header=first, note=f"{first} kernel junoproc does not use")
        quality = "addendum" if kpl_kind == "ik" and "addendum" in path.stem.lower() else "primary"
        return KernelFile(path, kpl_kind, quality, header=first)
    if has_data and ext_kind in TEXT_KINDS:
        # No KPL/ header (ISIS addenda): kind from the extension; an IK is an addendum.
        quality = "addendum" if ext_kind == "ik" else "primary"
        return KernelFile(path, ext_kind, quality, note="no KPL/ header line")
    return KernelFile(path, "unusable", note="neither a DAF file nor a text kernel with \\begindata")


def _as_dirs(kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[Path, ...]:
    if isinstance(kdir, (str, os.PathLike)):
        return (Path(kdir),)
    return tuple(Path(d) for d in kdir)


def _dirs_label(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _walk_files(dirs: Sequence[Path]) -> list[Path]:
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    out: list[Path] = []
    for root in dirs:
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = []
            for here, subdirs, names in os.walk(root, followlinks=True):
                real = os.path.realpath(here)
                if real in seen_dirs:
                    subdirs[:] = []
                    continue
                seen_dirs.add(real)
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                candidates.extend(Path(here) / n for n in sorted(names) if not n.startswith("."))
        else:
            continue
        for p in candidates:
            real = os.path.realpath(p)
            if real not in seen_files and p.is_file():
                seen_files.add(real)
                out.append(p)
    return out


_SPK_COV_CACHE: dict[tuple[str, int, int], tuple[BodyCoverage, ...]] = {}
_CK_COV_CACHE: dict[tuple[Any, ...], tuple[BodyCoverage, ...]] = {}


def _spice_short(err: SpiceyError) -> str:
    short = getattr(err, "short", "") or ""
    long = getattr(err, "long", "") or ""
    text = f"{short} {long}".strip() or str(err).split("\n", 1)[0]
    return " ".join(text.split())[:300]


@contextlib.contextmanager
def _spice_errors(path: Any, what: str, hint: str = "the file may be damaged: delete it and fetch again"
                  ) -> Iterator[None]:
    try:
        yield
    except SpiceyError as err:
        raise KernelError(f"{what}: {_spice_short(err)}", path=path, hint=hint) from err


def _window_pairs(cell: Any) -> tuple[tuple[float, float], ...]:
    return tuple(tuple(float(x) for x in sp.wnfetd(cell, i)) for i in range(sp.wncard(cell)))  # type: ignore[misc]


def _spk_coverage(path: Path) -> tuple[BodyCoverage, ...]:
    key = _file_key(path)
    if key not in _SPK_COV_CACHE:
        with _spice_errors(path, "cannot read SPK coverage"):
            ids = sp.spkobj(str(path), sp.cell_int(10_000))
            out = []
            for i in range(sp.card(ids)):
                body = int(ids[i])
                cover = sp.spkcov(str(path), body, sp.cell_double(_WINDOW_CELL_SIZE))
                out.append(BodyCoverage(body, _window_pairs(cover)))
        _SPK_COV_CACHE[key] = tuple(out)
    return _SPK_COV_CACHE[key]


def _ck_coverage(path: Path, clock_key: tuple[Any, ...]) -> tuple[BodyCoverage, ...]:
    """CK coverage in TDB: needs an LSK and the spacecraft's SCLK in the pool."""
    key = (*_file_key(path), clock_key)
    if key not in _CK_COV_CACHE:
        with _spice_errors(path, "cannot read CK coverage"):
            ids = sp.ckobj(str(path), sp.cell_int(10_000))
            out = []
            for i in range(sp.card(ids)):
                inst = int(ids[i])
                cover = sp.ckcov(str(path), inst, False, "INTERVAL", 0.0, "TDB",
                                 sp.cell_double(_WINDOW_CELL_SIZE))
                out.append(BodyCoverage(inst, _window_pairs(cover)))
        _CK_COV_CACHE[key] = tuple(out)
    return _CK_COV_CACHE[key]


def _family(name: str) -> str:
    return re.sub(r"\d+", "#", name.lower())


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def _newest_per_family(files: Iterable[KernelFile]) -> tuple[list[KernelFile], list[str]]:
    """Newest file per (kind, quality, name family); notes name the files left out."""
    groups: dict[tuple[str, str, str], list[KernelFile]] = {}
    for f in files:
        groups.setdefault((f.kind, f.quality, _family(f.name)), []).append(f)
    chosen: list[KernelFile] = []
    notes: list[str] = []
    for members in groups.values():
        members.sort(key=lambda f: (_version(f.name), f.name))
        best = members[-1]
        chosen.append(best)
        for other in members[:-1]:
            if other.name == best.name:
                notes.append(f"{other.path} duplicates {best.path}; using {best.path}")
            else:
                notes.append(f"{other.name} not loaded: newer {best.name} is present")
    return chosen, notes


def _text_order(files: Iterable[KernelFile]) -> list[KernelFile]:
    def key(f: KernelFile) -> tuple[int, int, str]:
        return (TEXT_KINDS.index(f.kind), 0 if f.quality == "addendum" else 1, f.name)

    return sorted(files, key=key)


def _choose_text_kernels(files: Sequence[KernelFile]) -> tuple[list[KernelFile], list[str]]:
    text = [f for f in files if f.kind in TEXT_KINDS]
    chosen, notes = _newest_per_family(text)
    return _text_order(chosen), notes


@contextlib.contextmanager
def _clock_kernels_loaded(files: Sequence[KernelFile]) -> Iterator[tuple[Any, ...] | None]:
    """Scoped LSK + SCLK (needed to express CK coverage in TDB); yields a cache key."""
    text, _ = _choose_text_kernels(files)
    clock = [f for f in text if f.kind in ("lsk", "sclk")]
    if not any(f.kind == "lsk" for f in clock) or not any(f.kind == "sclk" for f in clock):
        yield None
        return
    with _furnish_paths([f.path for f in clock]):
        yield tuple(_file_key(f.path) for f in clock)


def find_kernel_files(
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    coverage: bool = True,
    include_unusable: bool = False,
) -> tuple[KernelFile, ...]:
    """Every kernel under ``kdir`` (one folder or several; subfolders walked, links followed).

    Classified by extension *and* content: DAF id word (``DAF/SPK``, ``DAF/CK``), text
    kernels by their ``KPL/`` header and ``\\begindata``.  With ``coverage`` the SPK and CK
    windows are read (CK coverage needs an LSK and SCLK among the files: they are loaded
    for the call only).  Sorted by kind (load order) then path.
    """
    dirs = _as_dirs(kdir)
    manifest = load_manifest()
    found = [kf for kf in (_classify(p, manifest) for p in _walk_files(dirs)) if kf is not None]
    if coverage:
        with_cov: list[KernelFile] = []
        for kf in found:
            if kf.kind == "spk":
                kf = replace(kf, coverage=_spk_coverage(kf.path))
            with_cov.append(kf)
        if any(kf.kind == "ck" for kf in with_cov):
            with _clock_kernels_loaded(with_cov) as clock_key:
                for i, kf in enumerate(with_cov):
                    if kf.kind != "ck":
                        continue
                    if clock_key is None:
                        with_cov[i] = replace(kf, note="CK coverage needs an LSK and the Juno SCLK")
                    else:
                        with_cov[i] = replace(kf, coverage=_ck_coverage(kf.path, clock_key))
        found = with_cov
    if not include_unusable:
        found = [kf for kf in found if kf.kind != "unusable"]
    order = {k: i for i, k in enumerate((*TEXT_KINDS, "spk", "ck", "bpck", "dsk", "mk", "unusable"))}
    return tuple(sorted(found, key=lambda kf: (order.get(kf.kind, 99), str(kf.path))))


# ----------------------------------------------------------------------------------------
# Text kernel assignments (to check an addendum does not silently change the IK)
# ----------------------------------------------------------------------------------------

_ASSIGN_RE = re.compile(r"([^\s=()',+]+)\s*(\+?=)\s*")
_TEXT_CACHE: dict[tuple[str, int, int], dict[str, tuple[Any, ...]]] = {}


def _data_text(text: str) -> str:
    out: list[str] = []
    in_data = False
    for line in text.splitlines():
        s = line.strip().lower()
        if s == "\\begindata":
            in_data = True
        elif s == "\\begintext":
            in_data = False
        elif in_data:
            out.append(line)
    return "\n".join(out)


def _value_items(raw: str) -> tuple[Any, ...]:
    items: list[Any] = []
    for m in re.finditer(r"'((?:[^']|'')*)'|(@\S+)|([^\s,()]+)", raw):
        if m.group(1) is not None:
            items.append(m.group(1).replace("''", "'"))
        elif m.group(2) is not None:
            items.append(m.group(2))
        else:
            token = m.group(3)
            try:
                items.append(float(token.replace("D", "E").replace("d", "e")))
            except ValueError:
                items.append(token)
    return tuple(items)


def text_kernel_assignments(path: str | os.PathLike[str]) -> dict[str, tuple[Any, ...]]:
    """The ``NAME = value`` assignments of a text kernel's data sections (``+=`` appends).

    Values are tuples of floats (``D`` exponents accepted) and strings (``@`` dates kept as
    text).  Used to compare kernels without loading them.
    """
    p = Path(path)
    key = _file_key(p)
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    data = _data_text(p.read_bytes().decode("latin-1"))
    out: dict[str, tuple[Any, ...]] = {}
    pos = 0
    while True:
        m = _ASSIGN_RE.search(data, pos)
        if not m:
            break
        name, op = m.group(1), m.group(2)
        i = m.end()
        if i < len(data) and data[i] == "(":
            j, in_str = i + 1, False
            while j < len(data) and (in_str or data[j] != ")"):
                if data[j] == "'":
                    in_str = not in_str
                j += 1
            raw, pos = data[i + 1:j], j + 1
        elif i < len(data) and data[i] == "'":
            j = i + 1
            while j < len(data):
                if data[j] == "'" and not data.startswith("''", j):
                    break
                j += 2 if data.startswith("''", j) else 1
            raw, pos = data[i:j + 1], j + 1
        else:
            end = re.compile(r"\s").search(data, i)
            j = end.start() if end else len(data)
            raw, pos = data[i:j], j
        values = _value_items(raw)
        out[name] = (out.get(name, ()) + values) if op == "+=" else values
    _TEXT_CACHE[key] = out
    return out


def _same_value(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0):
                return False
        elif x != y:
            return False
    return True


def _addendum_conflicts(text: Sequence[KernelFile]) -> list[str]:
    """Keys an IK addendum sets that a primary IK (loaded after it, so it wins) sets differently."""
    primary = [f for f in text if f.kind == "ik" and f.quality == "primary"]
    notes = []
    for add in (f for f in text if f.kind == "ik" and f.quality == "addendum"):
        add_keys = text_kernel_assignments(add.path)
        for ik in primary:
            ik_keys = text_kernel_assignments(ik.path)
            for name, value in add_keys.items():
                if name in ik_keys and not _same_value(value, ik_keys[name]):
                    notes.append(
                        f"{add.name} sets {name} = {list(value)} but {ik.name} has "
                        f"{list(ik_keys[name])}; {ik.name} is loaded last, its value is used"
                    )
    return notes


# ----------------------------------------------------------------------------------------
# Scoped loading
# ----------------------------------------------------------------------------------------


def _loaded_kernels() -> list[str]:
    return [sp.kdata(i, "ALL")[0] for i in range(sp.ktotal("ALL"))]


@contextlib.contextmanager
def _furnish_paths(paths: Sequence[Path]) -> Iterator[None]:
    """furnsh ``paths`` in order; on exit unload exactly those loads (and only those).

    SPICE counts each furnsh of a file (text or binary) and ``unload`` removes one of them,
    so a file the caller had loaded already stays loaded after the block.
    """
    names: list[str] = []
    for p in paths:
        name = str(Path(p).resolve())
        if len(name) > _SPICE_MAX_PATH:
            raise KernelError(f"path longer than SPICE's {_SPICE_MAX_PATH} characters", path=name,
                              hint="move the kernels to a shorter folder")
        if name not in names:
            names.append(name)
    before = Counter(_loaded_kernels())
    loaded: list[str] = []
    try:
        for name in names:
            with _spice_errors(name, "cannot load kernel"):
                sp.furnsh(name)
            loaded.append(name)
        yield
    finally:
        if not before and Counter(_loaded_kernels()) == Counter(loaded) and sp.ktotal("TEXT"):
            # The pool held nothing else: one kclear instead of unloads (each text kernel
            # unload makes SPICE re-read every remaining text kernel; like kclear, it also
            # drops variables set with pdpool).
            sp.kclear()
        else:
            for name in reversed(loaded):
                with contextlib.suppress(SpiceyError):
                    sp.unload(name)
        now = Counter(_loaded_kernels())
        for name in loaded:  # safety net: never leave the caller with fewer loads than before
            for _ in range(before[name] - now[name]):
                with contextlib.suppress(SpiceyError):
                    sp.furnsh(name)


# ----------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSet:
    """The kernels chosen for one time span, in load order, and what they cover.

    ``files``: text kernels (LSK, PCK, FK, IK addenda, IK, SCLK), then SPKs (reconstructed
    last, so it takes priority), then CKs.  Each carries its kind, quality and sha256.
    ``spk_covered``: the Juno SPK and the target's ephemeris cover the span (with margin)
    and the target's light-time-corrected state from Juno is computable at its ends.
    ``ck_covered``: a CK for JUNO_SPACECRAFT covers the span.
    """

    kernel_dirs: tuple[Path, ...]
    source: KernelDirSource
    files: tuple[KernelFile, ...]
    target: str | None = None
    target_id: int | None = None
    et_span: tuple[float, float] | None = None
    utc_span: tuple[str, str] | None = None
    margin_s: float = DEFAULT_MARGIN_S
    spk_covered: bool = False
    ck_covered: bool = False
    notes: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def kernel_dir(self) -> Path:
        return self.kernel_dirs[0]

    def of_kind(self, kind: str) -> tuple[KernelFile, ...]:
        return tuple(f for f in self.files if f.kind == kind)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for the sidecar: source, span, coverage, names and checksums."""
        return {
            "source": str(self.source),
            "kernel_dirs": [str(d) for d in self.kernel_dirs],
            "target": self.target,
            "target_id": self.target_id,
            "span_utc": list(self.utc_span) if self.utc_span else None,
            "margin_s": self.margin_s,
            "spk_covered": self.spk_covered,
            "ck_covered": self.ck_covered,
            "kernels": [
                {"name": f.name, "kind": f.kind, "quality": f.quality, "sha256": f.sha256}
                for f in self.files
            ],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _JunoIds:
    spacecraft_id: int
    ck_id: int
    camera_ins_id: int


def _missing_kind(kind: str, dirs: Sequence[Path]) -> KernelMissingError:
    entry = load_manifest().generic_for(kind)
    return KernelMissingError(
        f"no {kind.upper()} ({entry.what}; e.g. {entry.name}) among the kernels",
        path=_dirs_label(dirs), hint=_FETCH_HINT,
    )


def _check_text_kinds(text: Sequence[KernelFile], dirs: Sequence[Path]) -> None:
    for kind in TEXT_KINDS:
        usable = [f for f in text if f.kind == kind and not (kind == "ik" and f.quality == "addendum")]
        if not usable:
            raise _missing_kind(kind, dirs)


def _juno_ids(text: Sequence[KernelFile], dirs: Sequence[Path]) -> _JunoIds:
    """Ids of Juno, its CK and JunoCam, read from the loaded FK; content checks of the pool."""
    label = _dirs_label(dirs)
    if not sp.expool("DELTET/DELTA_AT"):
        raise _missing_kind("lsk", dirs)
    try:
        sc_id = int(sp.bodn2c(_SPACECRAFT_BODY))
    except SpiceyError as err:  # pragma: no cover - built into SPICE
        raise KernelMissingError(f"SPICE does not know {_SPACECRAFT_BODY}", path=label) from err
    sc_frame = sp.namfrm(_SPACECRAFT_FRAME)
    cam_frame = sp.namfrm(_CAMERA_FRAME)
    if not sc_frame or not cam_frame:
        fk = load_manifest().generic_for("fk")
        raise KernelMissingError(
            f"the FK does not define {_SPACECRAFT_FRAME} and {_CAMERA_FRAME}", path=label,
            hint=f"add the Juno frames kernel {fk.name} ({_FETCH_HINT})",
        )
    with _spice_errors(label, "frames kernel incomplete"):
        ck_id = int(sp.frinfo(sc_frame)[2])
        cam_ins = int(sp.frinfo(cam_frame)[2])
    focal_key = f"INS{cam_ins}_FOCAL_LENGTH"
    if not any(focal_key in text_kernel_assignments(f.path)
               for f in text if f.kind == "ik" and f.quality == "primary"):
        ik = load_manifest().generic_for("ik")
        raise KernelMissingError(
            f"no IK defines {focal_key} (JunoCam instrument kernel, e.g. {ik.name})", path=label,
            hint=_FETCH_HINT,
        )
    if not sp.expool(f"SCLK_DATA_TYPE_{-sc_id}"):
        sclk = load_manifest().generic_for("sclk")
        raise KernelMissingError(
            f"no SCLK for {_SPACECRAFT_BODY} ({sc_id}) (e.g. {sclk.name})", path=label, hint=_FETCH_HINT,
        )
    return _JunoIds(sc_id, ck_id, cam_ins)


def _target_id(target: str, dirs: Sequence[Path]) -> int:
    name = target.strip().upper()
    try:
        body = int(sp.bodn2c(name))
    except SpiceyError:
        raise UnknownTargetError(f"target {name!r} is not a body SPICE knows", path=_dirs_label(dirs),
                                 hint="use TARGET_NAME of the product (JUPITER, IO, EUROPA, ...)") from None
    if not sp.bodfnd(body, "RADII"):
        raise UnknownTargetError(f"no radii for {name} ({body}) in the PCK", path=_dirs_label(dirs),
                                 hint="use a PCK that defines its radii (pck00010.tpc)")
    return body


def _is_jovian_moon(body: int) -> bool:
    """NAIF ids 501..598 are Jupiter's satellites (599 is Jupiter, 5 the barycentre)."""
    return 500 < body < 599


def _to_et(t: float | str) -> float:
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    text = str(t).strip()
    with _spice_errors(text, "cannot read time", hint="use ISO UTC such as 2022-08-17T13:44:55.688"):
        return float(sp.str2et(text))


def _utc(et: float) -> str:
    return str(sp.et2utc(et, "ISOC", 3))


def _gaps(intervals: Iterable[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """Parts of [lo, hi] that no interval covers (a zero-length span is one instant)."""
    ivs = sorted(intervals)
    if hi <= lo:
        return [] if any(a <= lo <= b for a, b in ivs) else [(lo, lo)]
    gaps: list[tuple[float, float]] = []
    cur = lo
    for a, b in ivs:
        if b < cur:
            continue
        if a > cur:
            gaps.append((cur, min(a, hi)))
        cur = max(cur, b)
        if cur >= hi:
            break
    if cur < hi:
        gaps.append((cur, hi))
    return [(a, b) for a, b in gaps if b > a]


def _fmt_spans(spans: Sequence[tuple[float, float]]) -> str:
    return ", ".join(f"{_utc(a)}–{_utc(b)}" for a, b in spans) + " UTC"


def _body_name(body: int) -> str:
    try:
        return str(sp.bodc2n(body))
    except SpiceyError:
        return str(body)


def _priority(f: KernelFile) -> tuple[int, tuple[int, ...], str]:
    return (QUALITY_RANK.get(f.quality, 1), f.name_order, f.name)


def _with_sha(files: Iterable[KernelFile]) -> tuple[KernelFile, ...]:
    return tuple(replace(f, sha256=file_sha256(f.path)) for f in files)


def select_kernels(
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    et_start: float | str,
    et_stop: float | str,
    target: str = "JUPITER",
    need_ck: bool = False,
    *,
    need_spk: bool = True,
    margin_s: float = DEFAULT_MARGIN_S,
    source: KernelDirSource | None = None,
) -> KernelSet:
    """Kernels from ``kdir`` (a folder or several) covering [et_start, et_stop].

    Times are TDB seconds past J2000 or UTC strings (converted with the folder's LSK).
    SPK: Juno and the target body (a moon needs its satellite ephemeris) must be covered
    over the span +- ``margin_s`` by ``spkcov`` over the files present, and the target's
    LT+S state seen from Juno must be computable at the span's ends.  CK: JUNO_SPACECRAFT's
    CK coverage (``ckcov``) decides ``ck_covered``; without it the set is still usable
    (the pointing stage solves attitude from the image) unless ``need_ck``.

    Raises KernelMissingError (a text kernel kind is missing), UnknownTargetError,
    KernelCoverageError (the missing span in UTC and the kind).
    """
    dirs = _as_dirs(kdir)
    label = _dirs_label(dirs)
    src = source or KernelDirSource("argument", f"folder given to select_kernels: {label}")
    files = find_kernel_files(dirs)
    if not files:
        raise KernelMissingError("no SPICE kernels found (folder empty or missing)", path=label,
                                 hint=_FETCH_HINT)
    text, notes = _choose_text_kernels(files)
    _check_text_kinds(text, dirs)
    notes += _addendum_conflicts(text)
    with _furnish_paths([f.path for f in text]):
        ids = _juno_ids(text, dirs)
        et0, et1 = _to_et(et_start), _to_et(et_stop)
        if et1 < et0:
            raise KernelError(f"time span ends before it starts ({_utc(et0)} > {_utc(et1)})", path=label)
        body = _target_id(target, dirs)
        lo, hi = et0 - margin_s, et1 + margin_s
        spks = sorted((f for f in files if f.kind == "spk" and f.intersects(lo, hi)), key=_priority)
        spk_problem: str | None = None
        for obj in (ids.spacecraft_id, body):
            gaps = _gaps((iv for f in spks for iv in f.intervals(obj)), lo, hi)
            if gaps:
                spk_problem = f"no SPK for {_body_name(obj)} ({obj}) covers {_fmt_spans(gaps)}"
                if obj != ids.spacecraft_id and _is_jovian_moon(obj):
                    spk_problem += " (a moon needs a satellite ephemeris jup3xx.bsp)"
                break
        if spk_problem is None:
            with _furnish_paths([f.path for f in spks]):
                for et in (et0, 0.5 * (et0 + et1), et1):
                    try:
                        sp.spkpos(str(body), et, "J2000", "LT+S", str(ids.spacecraft_id))
                    except SpiceyError as err:
                        spk_problem = (f"SPK chain from {_body_name(ids.spacecraft_id)} to "
                                       f"{target.upper()} incomplete at {_utc(et)} UTC: "
                                       f"{getattr(err, 'short', '') or 'SPICE error'}")
                        break
        if spk_problem is not None:
            if need_spk:
                raise KernelCoverageError(spk_problem, path=label, hint=_FETCH_HINT)
            notes.append(spk_problem)
        cks = sorted((f for f in files if f.kind == "ck" and f.intersects(lo, hi)), key=_priority)
        ck_gaps = _gaps((iv for f in cks for iv in f.intervals(ids.ck_id)), lo, hi)
        if ck_gaps:
            ck_problem = f"no CK for {_SPACECRAFT_FRAME} ({ids.ck_id}) covers {_fmt_spans(ck_gaps)}"
            if need_ck:
                raise KernelCoverageError(
                    ck_problem, path=label,
                    hint=f"{_FETCH_HINT}, or let the pointing stage solve attitude from the image",
                )
            notes.append(f"{ck_problem}: the pointing stage solves attitude from the image")
        utc_span = (_utc(et0), _utc(et1))
    return KernelSet(
        kernel_dirs=tuple(d.resolve() for d in dirs),
        source=src,
        files=_with_sha((*text, *spks, *cks)),
        target=target.strip().upper(),
        target_id=body,
        et_span=(et0, et1),
        utc_span=utc_span,
        margin_s=margin_s,
        spk_covered=spk_problem is None,
        ck_covered=not ck_gaps,
        notes=tuple(notes),
    )


def select_kernels_for(
    meta: Any,
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    need_ck: bool = False,
    margin_s: float = DEFAULT_MARGIN_S,
    source: KernelDirSource | None = None,
) -> KernelSet:
    """:func:`select_kernels` for a product's :class:`~junoproc.products.ProductMeta`
    (START_TIME .. STOP_TIME, or start + frames x INTERFRAME_DELAY; TARGET_NAME)."""
    span = _span_from_meta(meta)
    return select_kernels(kdir, span.start_utc, span.stop_utc, span.target, need_ck,
                          margin_s=margin_s, source=source)


@contextlib.contextmanager
def furnished(kset: KernelSet) -> Iterator[KernelSet]:
    """Load ``kset`` (in its order) for the block; unload exactly those files afterwards."""
    with _furnish_paths(kset.paths):
        yield kset


def generic_kernel_set(
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    source: KernelDirSource | None = None,
) -> KernelSet:
    """LSK, PCK, FK, IK(s), SCLK from ``kdir`` (checked), without SPK/CK."""
    dirs = _as_dirs(kdir)
    src = source or KernelDirSource("argument", f"folder given: {_dirs_label(dirs)}")
    text, notes = _choose_text_kernels(find_kernel_files(dirs, coverage=False))
    _check_text_kinds(text, dirs)
    notes += _addendum_conflicts(text)
    with _furnish_paths([f.path for f in text]):
        _juno_ids(text, dirs)
    return KernelSet(tuple(d.resolve() for d in dirs), src, _with_sha(text), notes=tuple(notes))


@contextlib.contextmanager
def load_generic_kernels(
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    source: KernelDirSource | None = None,
) -> Iterator[KernelSet]:
    """Scoped pool with LSK, PCK, FK, IK and SCLK only (for the camera model)."""
    kset = generic_kernel_set(kdir, source=source)
    with furnished(kset):
        yield kset


def utc_span_to_et(
    start_utc: str,
    stop_utc: str,
    kernel_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[float, float]:
    """UTC strings -> TDB seconds past J2000, with the folder's LSK loaded for the call only."""
    dirs = _as_dirs(kernel_dir)
    text, _ = _choose_text_kernels(find_kernel_files(dirs, coverage=False))
    lsk = [f for f in text if f.kind == "lsk"]
    if not lsk:
        raise _missing_kind("lsk", dirs)
    with _furnish_paths([lsk[-1].path]):
        return _to_et(start_utc), _to_et(stop_utc)


# ----------------------------------------------------------------------------------------
# Listing what a folder holds
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelListing:
    """One row of ``junoproc kernels list``: a file and its coverage in UTC."""

    file: KernelFile
    relative_path: str
    coverage_utc: tuple[str, ...]


def list_kernels(
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[KernelListing, ...]:
    """Kernels in ``kdir`` with kind, quality and (SPK/CK) coverage per object in UTC."""
    dirs = _as_dirs(kdir)
    files = find_kernel_files(dirs, include_unusable=True)
    text, _ = _choose_text_kernels(files)
    naming = [f.path for f in text if f.kind in ("lsk", "fk")]  # UTC and CK frame names
    rows: list[KernelListing] = []
    have_lsk = any(f.kind == "lsk" for f in text)
    with _furnish_paths(naming if have_lsk else []):
        for f in files:
            rel = str(f.path)
            for d in dirs:
                with contextlib.suppress(ValueError):
                    rel = str(f.path.relative_to(d))
                    break
            cov: list[str] = []
            if f.coverage:
                # Objects that share one window are shown together.
                by_window: dict[tuple[tuple[float, float], ...], list[int]] = {}
                for c in f.coverage:
                    by_window.setdefault(c.intervals_et, []).append(c.object_id)
                for window, objs in by_window.items():
                    names = ", ".join(f"{_object_name(o, f.kind)} ({o})" for o in objs)
                    if not window:
                        cov.append(f"{names}: no coverage")
                        continue
                    first, last = window[0][0], window[-1][1]
                    extent = (f"{_utc(first)} – {_utc(last)}" if have_lsk
                              else f"ET {first:.3f} – {last:.3f}")
                    gaps = f" ({len(window)} intervals)" if len(window) > 1 else ""
                    cov.append(f"{names}: {extent}{gaps}")
            elif f.note:
                cov.append(f.note)
            rows.append(KernelListing(f, rel, tuple(cov)))
    return tuple(rows)


def _object_name(obj: int, kind: str) -> str:
    if kind == "ck":
        try:
            return str(sp.ccifrm(3, obj)[1])
        except SpiceyError:
            return "CK"
    return _body_name(obj)


# ----------------------------------------------------------------------------------------
# Images: their time spans, and what covers them
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpan:
    """The time span of one raw product, from its metadata."""

    product_id: str
    target: str
    start_utc: str
    stop_utc: str
    origin: str


def _span_from_meta(meta: Any) -> ImageSpan:
    stop = meta.stop_time_utc
    if not stop:
        start = _parse_utc(meta.start_time_utc)
        seconds = meta.n_frames * meta.interframe_delay_s + meta.exposure_ms * 1e-3
        stop = (start + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    return ImageSpan(meta.product_id, meta.target, meta.start_time_utc, stop, meta.metadata_path)


def scan_image_spans(path: str | os.PathLike[str]) -> tuple[tuple[ImageSpan, ...], tuple[str, ...]]:
    """Time spans of the products under ``path`` (folder, zip, metadata JSON or PDS3 label,
    found by :func:`junoproc.products.find_products`), and one line per product whose time
    cannot be known (no metadata, unreadable file)."""
    from . import products

    spans: list[ImageSpan] = []
    problems: list[str] = []
    for entry in products.find_products(Path(path)):
        if entry.problem is not None:
            problems.append(entry.problem)
            continue
        if entry.metadata is None:
            problems.append(f"{entry.product_id}: no metadata, so its time is unknown "
                            "(download the product's -Data.zip)")
            continue
        try:
            data = products.read_bytes(entry.metadata, limit=products.MAX_METADATA_BYTES)
            if entry.kind == "pds3":
                label = products.read_pds3_label(data, path=entry.metadata)
            else:
                label = products.read_site_json(data, path=entry.metadata)
            meta = products.parse_metadata(label, path=str(entry.metadata))
        except JunoprocError as err:
            problems.append(err.one_line())
            continue
        spans.append(_span_from_meta(meta))
    spans.sort(key=lambda s: (s.start_utc, s.product_id))
    return tuple(spans), tuple(problems)


def image_spans(path: str | os.PathLike[str]) -> tuple[ImageSpan, ...]:
    """Time spans of the products under ``path``; MissingMetadataError if there are none."""
    spans, problems = scan_image_spans(path)
    if not spans:
        what = problems[0] if problems else "no JunoCam product metadata found"
        raise MissingMetadataError(what, path=None if problems else Path(path),
                                   hint="download the products' -Data.zip (it holds the metadata)")
    return spans


@dataclass(frozen=True)
class ImageCoverage:
    """What covers one image: its KernelSet, or the problem that stopped selection."""

    span: ImageSpan
    kernel_set: KernelSet | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.kernel_set is not None and self.kernel_set.spk_covered


def coverage_report(
    spans: Sequence[ImageSpan],
    kdir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    source: KernelDirSource | None = None,
    need_ck: bool = False,
    margin_s: float = DEFAULT_MARGIN_S,
) -> tuple[ImageCoverage, ...]:
    """``select_kernels`` for each image; coverage problems are recorded, not raised.

    A missing text kernel (the same for every image) is raised as KernelMissingError.
    """
    out = []
    for span in spans:
        try:
            kset = select_kernels(kdir, span.start_utc, span.stop_utc, span.target, need_ck,
                                  margin_s=margin_s, source=source)
            out.append(ImageCoverage(span, kset))
        except KernelMissingError:
            raise
        except JunoprocError as err:
            out.append(ImageCoverage(span, None, err.message))
    return tuple(out)


# ----------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------


def _parse_utc(text: str) -> datetime:
    """ISO (``2022-08-17T13:44:55.688``) or day-of-year (``2022-229T13:44:55``) UTC."""
    s = text.strip().rstrip("Z")
    m = re.match(r"^(\d{4})-(\d{3})T(.*)$", s)
    if m:
        base = datetime.strptime(f"{m.group(1)}-{m.group(2)}", "%Y-%j")
        s = f"{base:%Y-%m-%d}T{m.group(3)}"
    s = re.sub(r"(\.\d{6})\d+$", r"\1", s)
    frac = re.search(r"\.(\d{1,5})$", s)
    if frac:
        s = s[: frac.start()] + "." + frac.group(1).ljust(6, "0")
    try:
        return datetime.fromisoformat(s).replace(tzinfo=UTC)
    except ValueError as err:
        raise MissingMetadataError(f"cannot read UTC time {text!r}", hint="use ISO UTC") from err


def _yymmdd(text: str) -> datetime:
    return datetime.strptime(text, "%y%m%d").replace(tzinfo=UTC)


@dataclass(frozen=True)
class MissionCandidate:
    """A mission kernel NAIF lists, with what its name claims."""

    name: str
    kind: str
    quality: str
    listing: str
    claimed_start: datetime | None
    claimed_stop: datetime | None
    name_order: tuple[int, ...]

    def claims(self, t: datetime) -> bool:
        """True if the name's dates include ``t`` (the stop day counts whole)."""
        if self.claimed_start is None or self.claimed_stop is None:
            return True
        return self.claimed_start <= t < self.claimed_stop + timedelta(days=1)

    @property
    def dated(self) -> bool:
        return self.claimed_start is not None

    def preference(self) -> tuple[int, int, tuple[int, ...], str]:
        return (QUALITY_RANK.get(self.quality, 1), 1 if self.dated else 0, self.name_order, self.name)


def parse_listing(html_text: str) -> tuple[str, ...]:
    """File names linked from a directory index page (Apache / http.server style)."""
    names: list[str] = []
    for href in re.findall(r"""href\s*=\s*["']([^"']+)["']""", html_text, re.I):
        href = urllib.parse.unquote(href.split("?", 1)[0].split("#", 1)[0])
        if not href or href.endswith("/") or href.startswith(("..", "mailto:")):
            continue
        name = href.rsplit("/", 1)[-1]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def mission_candidates(names: Iterable[str], rules: Iterable[MissionRule]) -> tuple[MissionCandidate, ...]:
    """Names matching the manifest's mission rules, with their claimed dates."""
    out: list[MissionCandidate] = []
    rules = list(rules)
    for name in names:
        for rule in rules:
            m = rule.match(name)
            if not m:
                continue
            g = m.groupdict()
            try:
                start = _yymmdd(g["start"]) if g.get("start") else None
                stop = _yymmdd(g["stop"]) if g.get("stop") else None
            except ValueError:
                continue
            out.append(MissionCandidate(name, rule.kind, rule.quality, rule.listing, start, stop,
                                        _name_numbers(m)))
            break
    return tuple(out)


def rank_candidates(candidates: Iterable[MissionCandidate], t: datetime) -> list[MissionCandidate]:
    """Candidates whose names claim ``t``, best first: reconstructed > predicted > nominal,
    dated before whole-mission files, then newest (created, version)."""
    return sorted((c for c in candidates if c.claims(t)), key=MissionCandidate.preference, reverse=True)


@dataclass(frozen=True)
class FetchedKernel:
    name: str
    kind: str
    url: str
    path: Path
    action: Literal["downloaded", "present", "planned"]
    sha256: str = ""


@dataclass(frozen=True)
class FetchResult:
    dest: Path
    base_url: str
    kernels: tuple[FetchedKernel, ...]
    notes: tuple[str, ...]
    coverage: tuple[ImageCoverage, ...]

    @property
    def downloaded(self) -> tuple[FetchedKernel, ...]:
        return tuple(k for k in self.kernels if k.action == "downloaded")


def _read_listing(url: str) -> tuple[str, ...]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - http(s) URL from config
            body = resp.read(16 * 2**20).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise KernelDownloadError(
            f"cannot read the kernel listing: {reason}", path=url,
            hint=f"check the network or ${NAIF_URL_ENV}; offline, pass --kernels DIR with local kernels",
        ) from err
    return parse_listing(body)


def _existing_by_name(dest: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in _walk_files([dest]) if dest.is_dir() else []:
        out.setdefault(p.name, p)
    return out


def _download(url: str, dest_file: Path, known_sha256: str | None, progress: bool) -> None:
    """pooch: streamed to a temporary file beside the target, checked, then renamed."""
    import pooch
    import requests

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{known_sha256}" if known_sha256 else None,
            fname=dest_file.name,
            path=dest_file.parent,
            progressbar=progress,
            downloader=pooch.HTTPDownloader(progressbar=progress, timeout=120),
        )
    except ValueError as err:
        raise KernelDownloadError(
            f"checksum mismatch for {dest_file.name}: expected sha256 {known_sha256}; nothing written",
            path=url, hint="the server sent a different file; retry, or report the manifest entry",
        ) from err
    except (requests.exceptions.RequestException, OSError) as err:
        raise KernelDownloadError(
            f"download failed: {' '.join(str(err).split())[:200]}", path=url,
            hint=f"check the network or ${NAIF_URL_ENV}; files already fetched are kept",
        ) from err
    finally:
        logger.setLevel(level)


def _valid_daf(path: Path, kind: str) -> bool:
    try:
        with path.open("rb") as fh:
            word = fh.read(8).decode("latin-1").strip()
    except OSError:
        return False
    return _DAF_KIND.get(word) == kind


def fetch_kernels(
    dest: str | os.PathLike[str],
    spans: Sequence[ImageSpan] = (),
    *,
    base_url: str | None = None,
    ck: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    source: KernelDirSource | None = None,
) -> FetchResult:
    """Download what ``spans`` need into ``dest`` (``<dest>/<kind>/<name>``).

    Generic kernels from the manifest (sha256 verified; a file already present anywhere
    under ``dest`` with the right checksum is kept).  Mission kernels from NAIF's listings:
    SPK (and CK unless ``ck=False``; the satellite ephemeris for moon targets; a newer
    SCLK) proposed by the dates in their names, then verified with spkcov/ckcov: a file
    whose real coverage misses the image is reported and the next candidate is tried.
    Downloads are atomic (temporary file, then rename) and resumable (present files are
    skipped).  The base URL is ``base_url`` > ``$JUNOPROC_NAIF_URL`` > the manifest's.
    """
    manifest = load_manifest()
    base = (base_url or naif_base_url(manifest)).rstrip("/")
    dest_dir = Path(dest).expanduser()
    if not dry_run:
        dest_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing_by_name(dest_dir)
    fetched: list[FetchedKernel] = []
    notes: list[str] = []

    def get(name: str, kind: str, url: str, sha: str | None, verify: str | None = None) -> Path:
        for done in fetched:  # several images may need the same file
            if done.name == name:
                return done.path
        have = existing.get(name)
        if have is not None:
            ok = file_sha256(have) == sha if sha else (verify is None or _valid_daf(have, verify))
            if ok:
                fetched.append(FetchedKernel(name, kind, url, have, "present", file_sha256(have)))
                return have
            if not sha and not dry_run:
                notes.append(f"{have} is not a valid {kind.upper()} file; downloading it again")
                have.unlink()
                have = None
        target = (have if have is not None and sha else dest_dir / kind / name)
        if dry_run:
            fetched.append(FetchedKernel(name, kind, url, target, "planned", sha or ""))
            return target
        _download(url, target, sha, progress)
        existing[name] = target
        fetched.append(FetchedKernel(name, kind, url, target, "downloaded", file_sha256(target)))
        return target

    for entry in manifest.generic:
        get(entry.name, entry.kind, entry.url(base), entry.sha256)

    listings: dict[str, tuple[str, ...]] = {}

    def candidates(kind: str, satellites: bool = False, required: bool = True
                   ) -> tuple[MissionCandidate, ...]:
        """Listed names matching the rules of ``kind``; an optional listing that cannot be
        read becomes a note (a mirror may lack it), a required one raises."""
        rules = [r for r in manifest.mission
                 if r.kind == kind and (r.quality == "satellite") == satellites]
        out: list[MissionCandidate] = []
        for listing in dict.fromkeys(r.listing for r in rules):
            if listing not in listings:
                try:
                    listings[listing] = _read_listing(f"{base}/{listing}")
                except KernelDownloadError as err:
                    if required:
                        raise
                    notes.append(err.one_line())
                    listings[listing] = ()
            out += mission_candidates(listings[listing], [r for r in rules if r.listing == listing])
        return tuple(out)

    # A newer Juno SCLK than the pinned one.
    pinned_sclk = manifest.generic_for("sclk")
    newer = [c for c in candidates("sclk", required=False)
             if _version(c.name) > _version(pinned_sclk.name)]
    if newer:
        best = max(newer, key=lambda c: _version(c.name))
        path = get(best.name, "sclk", f"{base}/{best.listing}{best.name}", None)
        if not dry_run and not path.read_bytes()[:8].startswith(b"KPL/SCLK"):
            path.unlink()
            notes.append(f"{best.name} is not an SCLK kernel (no KPL/SCLK header); removed")

    if spans:
        for kind, wanted, label in (("spk", True, "SPK"), ("ck", ck, "CK")):
            if not wanted:
                continue
            pool = candidates(kind, required=(kind == "spk"))
            for span in spans:
                _fetch_for_span(span, kind, label, pool, base, get, notes, dry_run, dest_dir)
        moons = sorted({s.target for s in spans if _target_is_moon(s.target)})
        if moons:
            sats = sorted(candidates("spk", satellites=True), key=MissionCandidate.preference)
            if sats:
                best = sats[-1]
                get(best.name, "spk", f"{base}/{best.listing}{best.name}", None, verify="spk")
            else:
                notes.append(f"no satellite ephemeris (jup3xx.bsp) listed for {', '.join(moons)}")

    coverage: tuple[ImageCoverage, ...] = ()
    if spans and not dry_run:
        coverage = coverage_report(spans, dest_dir, source=source)
    return FetchResult(dest_dir, base, tuple(fetched), tuple(dict.fromkeys(notes)), coverage)


def _fetch_for_span(
    span: ImageSpan, kind: str, label: str, pool: Sequence[MissionCandidate], base: str,
    get: Any, notes: list[str], dry_run: bool, dest_dir: Path,
) -> None:
    """For the span's start and stop: the best candidate whose *name* claims the time,
    downloaded, then kept only if its real coverage (spkcov/ckcov) holds the time; else
    the next candidate.  The stop is skipped when a file chosen for the start covers it."""
    chosen: list[tuple[MissionCandidate, Path]] = []
    for utc in (span.start_utc, span.stop_utc):
        t = _parse_utc(utc)
        if chosen:  # the stop: often the file chosen for the start covers it too
            cand, path = chosen[0]
            if cand.claims(t) if dry_run else _covers_at(path, kind, utc, dest_dir):
                continue
        ranked = rank_candidates(pool, t)
        if not ranked:
            notes.append(f"no {label} listed whose name covers {span.product_id} ({t:%Y-%m-%d})")
            continue
        for cand in ranked:
            path = get(cand.name, kind, f"{base}/{cand.listing}{cand.name}", None, verify=kind)
            if dry_run or _covers_at(path, kind, utc, dest_dir):
                chosen.append((cand, path))
                break
            claimed = (f"{cand.claimed_start:%Y-%m-%d}–{cand.claimed_stop:%Y-%m-%d}"
                       if cand.claimed_start and cand.claimed_stop else "the whole mission")
            notes.append(f"{cand.name}: its name claims {claimed} but its coverage misses "
                         f"{span.product_id} at {utc}; trying the next candidate")
        else:
            notes.append(f"no listed {label} covers {span.product_id} at {utc} after download")


def _covers_at(path: Path, kind: str, utc: str, dest_dir: Path) -> bool:
    """Real coverage (spkcov for JUNO / ckcov for JUNO_SPACECRAFT) of ``utc`` +- the margin
    by one downloaded file, with the LSK, SCLK and FK of ``dest_dir`` loaded for the call."""
    text, _ = _choose_text_kernels(find_kernel_files([dest_dir], coverage=False))
    needed = [f.path for f in text if f.kind in ("lsk", "sclk", "fk")]
    with _furnish_paths(needed):
        et = _to_et(utc)
        if kind == "spk":
            obj = int(sp.bodn2c(_SPACECRAFT_BODY))
            cov = _spk_coverage(path)
        else:
            frame = sp.namfrm(_SPACECRAFT_FRAME)
            if not frame:
                return False
            obj = int(sp.frinfo(frame)[2])
            clock = tuple(_file_key(f.path) for f in text if f.kind in ("lsk", "sclk"))
            cov = _ck_coverage(path, clock)
    intervals = [iv for c in cov if c.object_id == obj for iv in c.intervals_et]
    return not _gaps(intervals, et - DEFAULT_MARGIN_S, et + DEFAULT_MARGIN_S)


def _target_is_moon(target: str) -> bool:
    try:
        return _is_jovian_moon(int(sp.bodn2c(target.strip().upper())))
    except SpiceyError:
        return False


def format_span(span: ImageSpan) -> str:
    """``2022-08-17T13:44:55.688 – 13:45:03.894`` (date not repeated)."""
    start, stop = span.start_utc, span.stop_utc
    if stop[:10] == start[:10]:
        stop = stop[11:]
    return f"{start} – {stop}"


__all__ = [
    "BodyCoverage", "DEFAULT_MARGIN_S", "FetchResult", "FetchedKernel", "GenericKernel",
    "ImageCoverage", "ImageSpan", "KERNELS_ENV", "KernelDirSource", "KernelFile", "KernelListing",
    "KernelManifest", "KernelSet", "MissionCandidate", "MissionRule", "NAIF_URL_ENV",
    "config_path", "coverage_report", "default_kernel_cache", "fetch_kernels", "file_sha256",
    "find_kernel_files", "furnished", "generic_kernel_set", "image_spans", "list_kernels",
    "load_generic_kernels", "load_manifest", "mission_candidates", "naif_base_url", "parse_listing",
    "kernels_beside", "rank_candidates", "resolve_kernel_dir", "scan_image_spans", "select_kernels",
    "select_kernels_for", "text_kernel_assignments", "utc_span_to_et",
]
