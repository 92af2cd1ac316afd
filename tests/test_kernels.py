"""Kernel management: manifest, precedence, discovery, selection by coverage, scoped loading,
download (against a fake NAIF served from 127.0.0.1), and the `junoproc kernels` commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import spiceypy as sp
from click.testing import CliRunner

from junoproc import kernels as K
from junoproc.cli import main
from junoproc.errors import (
    KernelCoverageError,
    KernelDownloadError,
    KernelError,
    KernelMissingError,
    UnknownTargetError,
)
from junoproc.products import parse_metadata

PJ44_META = "perijove44/13544-ImageSet/DataSet/13544-Metadata.json"
PJ44_SPK = "spk_pre_220614_221109_220810_jm0450.bsp"
PJ01_SPK = "JNCR_2016240_01M06152_V01_METHANE_0008_1.bsp"
PJ01_CK = "juno_sc_rec_160821_160827_v01_1_sliced_-61000.bc"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No user environment leaks in: no kernel folder, a private config and cache."""
    for var in (K.KERNELS_ENV, K.NAIF_URL_ENV, K.CONFIG_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("JUNOPROC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _loaded() -> list[str]:
    return [sp.kdata(i, "ALL")[0] for i in range(sp.ktotal("ALL"))]


def _link_folder(dst: Path, files: list[Path]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dst / f.name).symlink_to(f)
    return dst


def _generic_files(kernel_dir: Path, skip: str = "") -> list[Path]:
    return [p for p in sorted(kernel_dir.rglob("*")) if p.is_file()
            and p.suffix in {".tls", ".tpc", ".tf", ".ti", ".tsc"} and p.parent.name != skip]


# ----------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------


def test_manifest_is_packaged_and_single_source():
    manifest = K.load_manifest()
    assert manifest.source.endswith("junoproc/data/kernel_manifest.toml")
    assert [g.kind for g in manifest.generic] == ["lsk", "pck", "fk", "ik", "sclk"]
    assert [g.name for g in manifest.generic] == [
        "naif0012.tls", "pck00010.tpc", "juno_v12.tf", "juno_junocam_v03.ti", "jno_sclkscet_00090.tsc"]
    urls = [g.url(manifest.base_url) for g in manifest.generic]
    assert urls[0] == "https://naif.jpl.nasa.gov/pub/naif/generic_kernels/lsk/naif0012.tls"
    assert urls[1] == "https://naif.jpl.nasa.gov/pub/naif/generic_kernels/pck/pck00010.tpc"
    assert all(u.startswith("https://naif.jpl.nasa.gov/pub/naif/JUNO/kernels/") for u in urls[2:])
    root = Path(__file__).resolve().parents[1]
    readme = (root / "kernels" / "README.md").read_text()
    assert "src/junoproc/data/kernel_manifest.toml" in readme
    assert not list((root / "kernels").glob("*manifest*")), "one source of truth: the packaged manifest"


def test_manifest_checksums_are_those_of_the_real_files(kernel_dir):
    for entry in K.load_manifest().generic:
        path = kernel_dir / entry.kind / entry.name
        assert path.stat().st_size == entry.size_bytes
        assert K.file_sha256(path) == entry.sha256


def test_base_url_override(monkeypatch):
    assert K.naif_base_url() == "https://naif.jpl.nasa.gov/pub/naif"
    monkeypatch.setenv(K.NAIF_URL_ENV, "http://127.0.0.1:9/mirror/")
    assert K.naif_base_url() == "http://127.0.0.1:9/mirror"


# ----------------------------------------------------------------------------------------
# Precedence: --kernels > $JUNOPROC_KERNELS > config kernels.dir > cache
# ----------------------------------------------------------------------------------------


def test_precedence_flag_env_config_cache(tmp_path, monkeypatch):
    flag_dir, env_dir, cfg_dir = (tmp_path / n for n in ("flag", "env", "cfgk"))
    for d in (flag_dir, env_dir, cfg_dir):
        d.mkdir()
    cfg = tmp_path / "xdg-config" / "junoproc" / "config.toml"
    cfg.parent.mkdir(parents=True)

    # Nothing configured: the cache folder (which need not exist yet).
    kdir, source = K.resolve_kernel_dir(None)
    assert (kdir, source.kind) == (tmp_path / "cache" / "kernels", "cache")
    assert "no kernels.dir" in str(source)

    cfg.write_text(f'[kernels]\ndir = "{cfg_dir}"\n')
    kdir, source = K.resolve_kernel_dir(None)
    assert (kdir, source.kind) == (cfg_dir, "config")
    assert str(cfg) in str(source)

    monkeypatch.setenv(K.KERNELS_ENV, str(env_dir))
    kdir, source = K.resolve_kernel_dir(None)
    assert (kdir, source.kind, str(source)) == (env_dir, "env", "$JUNOPROC_KERNELS")

    kdir, source = K.resolve_kernel_dir(str(flag_dir))
    assert (kdir, source.kind, str(source)) == (flag_dir, "flag", "--kernels flag")


def test_config_relative_path_and_explicit_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "elsewhere" / "my.toml"
    (tmp_path / "elsewhere" / "k").mkdir(parents=True)
    cfg.write_text('[kernels]\ndir = "k"\n')
    monkeypatch.setenv(K.CONFIG_ENV, str(cfg))
    kdir, source = K.resolve_kernel_dir()
    assert kdir == tmp_path / "elsewhere" / "k"
    assert source.kind == "config"


def test_precedence_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, str(tmp_path / "missing"))
    with pytest.raises(KernelMissingError, match=r"missing: kernel folder does not exist \(chosen by "
                                                  r"\$JUNOPROC_KERNELS\)"):
        K.resolve_kernel_dir()
    # a fetch destination may not exist yet
    assert K.resolve_kernel_dir(must_exist=False)[0] == tmp_path / "missing"
    monkeypatch.delenv(K.KERNELS_ENV)
    cfg = tmp_path / "xdg-config" / "junoproc" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[kernels\ndir = 1\n")
    with pytest.raises(KernelError, match="config file unreadable") as err:
        K.resolve_kernel_dir()
    assert "\n" not in str(err.value) and str(cfg) in str(err.value)
    cfg.write_text("[kernels]\ndir = 3\n")
    with pytest.raises(KernelError, match="kernels.dir must be a folder path"):
        K.resolve_kernel_dir()


# ----------------------------------------------------------------------------------------
# Discovery and classification
# ----------------------------------------------------------------------------------------


def test_find_kernel_files_in_subfolders(kernel_dir):
    files = K.find_kernel_files(kernel_dir)
    assert [(f.kind, f.quality, f.path.relative_to(kernel_dir).as_posix()) for f in files] == [
        ("lsk", "primary", "lsk/naif0012.tls"),
        ("pck", "primary", "pck/pck00010.tpc"),
        ("fk", "primary", "fk/juno_v12.tf"),
        ("ik", "primary", "ik/juno_junocam_v03.ti"),
        ("sclk", "primary", "sclk/jno_sclkscet_00090.tsc"),
        ("spk", "predicted", f"spk/{PJ44_SPK}"),  # the .bsp.lbl beside it is not a kernel
    ]
    spk = files[-1]
    assert {c.object_id for c in spk.coverage} == {-61, 3, 5, 10, 301, 399, 599}
    (start, stop), = spk.intervals(-61)
    et_start, et_stop = K.utc_span_to_et("2022-06-14T02:58:50.815", "2022-11-09T21:38:27.812", kernel_dir)
    assert start == pytest.approx(et_start, abs=1e-3) and stop == pytest.approx(et_stop, abs=1e-3)


def test_find_kernel_files_pj01_unpatterned_names_and_isis_addendum(data_dir):
    folder = data_dir / "pj01-ck-geometry"
    files = {f.name: f for f in K.find_kernel_files([folder, data_dir / "kernels"])}
    assert files["JNCR_2016240_01M06152_V01_METHANE_0008_0.bsp"].kind == "spk"
    assert files["JNCR_2016240_01M06152_V01_METHANE_0008_0.bsp"].quality == "unknown"
    assert files[PJ01_CK].kind == "ck" and files[PJ01_CK].quality == "reconstructed"
    assert files["junoAddendum005.ti"].kind == "ik" and files["junoAddendum005.ti"].quality == "addendum"
    assert "JNCR_2016240_01M06152_V01_isis3.lbl" not in files
    # CK coverage is read with the LSK + SCLK of the folders (loaded for the call only)
    (start, stop), = files[PJ01_CK].intervals(-61000)
    assert stop - start == pytest.approx(91.92, abs=0.01)


def test_classification_by_content_not_extension(tmp_path, data_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(data_dir / "pj01-ck-geometry" / PJ01_CK, flat / "renamed_attitude.bsp")  # a CK
    (flat / "notes.bsp").write_text("hello, not a kernel\n")
    (flat / "error_page.ti").write_text("<html><body>404</body></html>\n")
    (flat / "meta.tm").write_text("KPL/MK\n\\begindata\nKERNELS_TO_LOAD = ( 'a.bsp' )\n")
    (flat / "loop").symlink_to(flat)  # a link loop must not hang the walk
    files = K.find_kernel_files(flat, coverage=False, include_unusable=True)
    kinds = {f.name: f.kind for f in files}
    assert kinds == {"renamed_attitude.bsp": "ck", "notes.bsp": "unusable", "error_page.ti": "unusable",
                     "meta.tm": "mk"}
    assert [f.name for f in K.find_kernel_files(flat, coverage=False)] == ["renamed_attitude.bsp", "meta.tm"]


def test_newest_text_kernel_of_a_family_wins(tmp_path, kernel_dir):
    folder = _link_folder(tmp_path / "k", _generic_files(kernel_dir) + [kernel_dir / "spk" / PJ44_SPK])
    shutil.copy(kernel_dir / "ik" / "juno_junocam_v03.ti", folder / "juno_junocam_v02.ti")
    kset = K.select_kernels(folder, "2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894")
    assert [f.name for f in kset.of_kind("ik")] == ["juno_junocam_v03.ti"]
    assert any("juno_junocam_v02.ti not loaded: newer juno_junocam_v03.ti" in n for n in kset.notes)


def test_text_kernel_assignments(tmp_path):
    ker = tmp_path / "x.ti"
    ker.write_text(
        "KPL/IK\nA = 1\n\\begindata\n"
        "INS-1_A = ( 1.5D-3, 2 )\nINS-1_S = 'it''s'\nINS-1_L = ( 'a', 'b' )\n"
        "INS-1_L += 'c'\nINS-1_T = @2016-AUG-27\n"
        "\\begintext\nINS-1_B = 99\n"
    )
    assert K.text_kernel_assignments(ker) == {
        "INS-1_A": (1.5e-3, 2.0), "INS-1_S": ("it's",), "INS-1_L": ("a", "b", "c"),
        "INS-1_T": ("@2016-AUG-27",),
    }


def test_gaps_exact():
    assert K._gaps([(0.0, 10.0)], 2.0, 8.0) == []
    assert K._gaps([(0.0, 5.0), (6.0, 10.0)], 2.0, 8.0) == [(5.0, 6.0)]
    assert K._gaps([(3.0, 4.0)], 2.0, 8.0) == [(2.0, 3.0), (4.0, 8.0)]
    assert K._gaps([], 2.0, 8.0) == [(2.0, 8.0)]
    assert K._gaps([(0.0, 1.0)], 1.0, 1.0) == []
    assert K._gaps([(0.0, 1.0)], 2.0, 2.0) == [(2.0, 2.0)]


# ----------------------------------------------------------------------------------------
# Selection by coverage
# ----------------------------------------------------------------------------------------


def test_select_pj44_picks_predicted_spk_and_reports_no_ck(data_dir, kernel_dir):
    meta = parse_metadata(json.loads((data_dir / PJ44_META).read_text()), path=data_dir / PJ44_META)
    kset = K.select_kernels_for(meta, kernel_dir)
    assert [f.kind for f in kset.files] == ["lsk", "pck", "fk", "ik", "sclk", "spk"]
    assert kset.of_kind("spk")[0].name == PJ44_SPK and kset.of_kind("spk")[0].quality == "predicted"
    assert kset.spk_covered and not kset.ck_covered
    assert kset.target == "JUPITER" and kset.target_id == 599
    assert kset.utc_span == ("2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894")
    assert any("no CK for JUNO_SPACECRAFT (-61000)" in n and "solves attitude from the image" in n
               for n in kset.notes)
    desc = kset.describe()
    sums = {k["name"]: k["sha256"] for k in desc["kernels"]}
    for entry in K.load_manifest().generic:
        assert sums[entry.name] == entry.sha256
    assert sums[PJ44_SPK] == K.file_sha256(kernel_dir / "spk" / PJ44_SPK)
    assert desc["ck_covered"] is False and desc["span_utc"][0].startswith("2022-08-17T13:44:55")
    json.dumps(desc)  # sidecar-ready


def test_select_with_et_floats_equals_utc(kernel_dir):
    et0, et1 = K.utc_span_to_et("2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894", kernel_dir)
    a = K.select_kernels(kernel_dir, et0, et1)
    b = K.select_kernels(kernel_dir, "2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894")
    assert a.paths == b.paths and a.et_span == pytest.approx(b.et_span)


def test_utc_span_to_et_exact(kernel_dir):
    # J2000 epoch: 2000-01-01T12:00:00 TT = 11:58:55.816 UTC (32 leap seconds + 32.184 s);
    # TDB - TT is -7.3e-5 s on that day (the periodic term of the LSK).
    et0, et1 = K.utc_span_to_et("2000-01-01T11:58:55.816", "2000-01-01T11:59:55.816", kernel_dir)
    assert et0 == pytest.approx(-7.2737e-5, abs=1e-8)
    assert et1 - et0 == pytest.approx(60.0, abs=1e-7)
    # a leap second: 2016-12-31T23:59:60 exists, so one UTC minute across it lasts 61 s
    a, b = K.utc_span_to_et("2016-12-31T23:59:30", "2017-01-01T00:00:30", kernel_dir)
    assert b - a == pytest.approx(61.0, abs=1e-6)


def test_time_outside_spk_names_span_and_kind(kernel_dir):
    with pytest.raises(KernelCoverageError) as err:
        K.select_kernels(kernel_dir, "2016-08-27T09:00:04", "2016-08-27T09:00:10")
    msg = str(err.value)
    assert msg.startswith(f"{kernel_dir}: no SPK for JUNO (-61) covers ")
    assert "2016-08-27T09:00:03.000–2016-08-27T09:00:11.000 UTC" in msg  # span +- 1 s margin
    assert "junoproc kernels fetch" in msg and "--kernels DIR" in msg and "\n" not in msg


def test_need_ck_without_ck_raises(kernel_dir):
    with pytest.raises(KernelCoverageError, match=r"no CK for JUNO_SPACECRAFT \(-61000\) covers "
                                                   r"2022-08-17T13:44:54.688"):
        K.select_kernels(kernel_dir, "2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894", need_ck=True)


def test_missing_ik_raises_kernel_missing(tmp_path, kernel_dir, data_dir):
    # An ISIS addendum alone is not the instrument kernel.
    files = _generic_files(kernel_dir, skip="ik") + [kernel_dir / "spk" / PJ44_SPK,
                                                      data_dir / "pj01-ck-geometry" / "junoAddendum005.ti"]
    folder = _link_folder(tmp_path / "noik", files)
    with pytest.raises(KernelMissingError) as err:
        K.select_kernels(folder, "2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894")
    assert "no IK (JunoCam instrument kernel" in str(err.value)
    assert "juno_junocam_v03.ti" in str(err.value) and str(folder) in str(err.value)


def test_missing_lsk_and_empty_folder(tmp_path, kernel_dir):
    folder = _link_folder(tmp_path / "nolsk", _generic_files(kernel_dir, skip="lsk"))
    with pytest.raises(KernelMissingError, match=r"no LSK \(leapseconds.*naif0012.tls"):
        K.select_kernels(folder, 0.0, 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelMissingError, match="no SPICE kernels found"):
        K.select_kernels(tmp_path / "empty", 0.0, 1.0)


def test_unknown_target(kernel_dir):
    with pytest.raises(UnknownTargetError, match="NOT_A_BODY"):
        K.select_kernels(kernel_dir, "2022-08-17T13:44:55", "2022-08-17T13:45:03", target="not_a_body")


def test_moon_target_needs_satellite_ephemeris(kernel_dir):
    with pytest.raises(KernelCoverageError, match=r"no SPK for IO \(501\).*satellite ephemeris jup3xx"):
        K.select_kernels(kernel_dir, "2022-08-17T13:44:55", "2022-08-17T13:45:03", target="IO")


def test_pj01_ck_geometry_with_generic_kernels_covers_with_ck(data_dir, kernel_dir):
    pj01 = data_dir / "pj01-ck-geometry"
    kset = K.select_kernels([pj01, kernel_dir], "2016-08-27T09:00:04", "2016-08-27T09:00:10", need_ck=True)
    assert kset.spk_covered and kset.ck_covered
    names = [f.name for f in kset.files]
    # only the slices that overlap the span; the addendum before the IK (the IK wins)
    assert names == ["naif0012.tls", "pck00010.tpc", "juno_v12.tf", "junoAddendum005.ti",
                     "juno_junocam_v03.ti", "jno_sclkscet_00090.tsc", PJ01_SPK, PJ01_CK]
    assert not any("sets" in n for n in kset.notes)  # the real addendum changes no IK value
    et0 = K.utc_span_to_et("2016-08-27T09:00:04.129", "2016-08-27T09:00:04.129", kernel_dir)[0]
    with K.furnished(kset):
        assert sp.gdpool("INS-61504_FILTER_OFFSET", 0, 1)[0] == 284.52  # added by the addendum
        assert sp.gdpool("INS-61504_DISTORTION_Y", 0, 1)[0] == 315.48  # the IK's own
        # Real attitude: Jupiter's centre crosses the camera along the spin direction by
        # ~4.44 deg per frame (2 rpm x 0.379 s) and stays near the middle column.
        dirs = []
        for n in range(12):
            et = et0 + 0.06188 + n * (0.378 + 0.001)
            pos, _ = sp.spkpos("JUPITER", et, "JUNO_JUNOCAM", "LT+S", "JUNO")
            dirs.append(pos / np.linalg.norm(pos))
        steps = np.degrees([np.arccos(np.clip(np.dot(a, b), -1, 1))
                            for a, b in zip(dirs[:-1], dirs[1:], strict=True)])
        assert np.all((steps > 4.3) & (steps < 4.6))
        cross = np.degrees(np.arctan2([d[0] for d in dirs], [d[2] for d in dirs]))
        assert np.all(np.abs(cross) < 1.0)
    with pytest.raises(sp.utils.exceptions.SpiceyError):
        sp.pxform("J2000", "JUNO_JUNOCAM", et0)


def test_addendum_cannot_silently_change_the_ik(tmp_path, kernel_dir):
    folder = _link_folder(tmp_path / "k", _generic_files(kernel_dir) + [kernel_dir / "spk" / PJ44_SPK])
    (folder / "junoAddendum099.ti").write_text(
        "\\begindata\nINS-61504_DISTORTION_Y = 999.0\nINS-61504_FILTER_OFFSET = 284.52\n\\begintext\n")
    kset = K.select_kernels(folder, "2022-08-17T13:44:55.688", "2022-08-17T13:45:03.894")
    conflict = [n for n in kset.notes if "INS-61504_DISTORTION_Y" in n]
    assert len(conflict) == 1 and "999.0" in conflict[0] and "315.48" in conflict[0]
    with K.furnished(kset):
        assert sp.gdpool("INS-61504_DISTORTION_Y", 0, 1)[0] == 315.48


# ----------------------------------------------------------------------------------------
# Scoped loading
# ----------------------------------------------------------------------------------------


def test_furnished_restores_the_pool(kernel_dir, data_dir):
    kset = K.select_kernels([data_dir / "pj01-ck-geometry", kernel_dir], "2016-08-27T09:00:04",
                            "2016-08-27T09:00:10")
    before, total = _loaded(), sp.ktotal("ALL")
    with K.furnished(kset) as inside:
        assert inside is kset
        assert sp.ktotal("ALL") == total + len(kset.paths)
        assert sp.ktotal("CK") >= 1
    assert sp.ktotal("ALL") == total and _loaded() == before
    # a kernel the caller loaded itself survives the block
    lsk = str((kernel_dir / "lsk" / "naif0012.tls").resolve())
    sp.furnsh(lsk)
    try:
        with K.furnished(kset):
            pass
        assert lsk in _loaded() and sp.ktotal("ALL") == total + 1
    finally:
        sp.unload(lsk)
    assert sp.ktotal("ALL") == total


def test_furnished_unloads_on_error(kernel_dir):
    kset = K.select_kernels(kernel_dir, "2022-08-17T13:44:55", "2022-08-17T13:45:03")
    total = sp.ktotal("ALL")
    with pytest.raises(RuntimeError), K.furnished(kset):
        raise RuntimeError("stage failed")
    assert sp.ktotal("ALL") == total


def test_load_generic_kernels_is_pool_only(kernel_dir):
    total, spks = sp.ktotal("ALL"), sp.ktotal("SPK")
    with K.load_generic_kernels(kernel_dir) as kset:
        assert [f.kind for f in kset.files] == ["lsk", "pck", "fk", "ik", "sclk"]
        assert sp.ktotal("SPK") == spks
        assert sp.gdpool("INS-61500_FOCAL_LENGTH", 0, 1)[0] == 10.95637
    assert sp.ktotal("ALL") == total


def test_import_loads_no_kernel():
    code = "import junoproc.kernels, junoproc.cli, spiceypy; print(spiceypy.ktotal('ALL'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


# ----------------------------------------------------------------------------------------
# Mission kernel names (what NAIF lists)
# ----------------------------------------------------------------------------------------


def test_parse_listing_apache_and_http_server():
    apache = ('<tr><td><a href="?C=N;O=D">Name</a></td></tr><a href="/pub/naif/JUNO/">Parent</a>'
              '<a href="juno_rec_160522_160729_160925.bsp">juno_rec_160522_160729_160925.bsp</a>'
              '<a href="aareadme.txt">aareadme.txt</a><a href="former_versions/">former/</a>')
    assert K.parse_listing(apache) == ("juno_rec_160522_160729_160925.bsp", "aareadme.txt")
    assert K.parse_listing('<a href="a%20b.bsp">') == ("a b.bsp",)


def test_mission_candidates_and_ranking():
    names = ["juno_rec_220801_220820_220901.bsp", "spk_pre_220614_221109_220810_jm0450.bsp",
             "spk_pre_220614_221109_220701_jm0440.bsp", "juno_pred_orbit.bsp", "juno_struct_v04.bsp",
             "juno_sc_rec_220815_220821_v01.bc", "juno_sc_rec_220815_220821_v02.bc",
             "juno_sc_nom_220815_220821_v01.bc", "jup365.bsp", "jup344.bsp", "jno_sclkscet_00100.tsc"]
    cands = {c.name: c for c in K.mission_candidates(names, K.load_manifest().mission)}
    assert "juno_struct_v04.bsp" not in cands
    assert cands["spk_pre_220614_221109_220810_jm0450.bsp"].quality == "predicted"
    assert cands["spk_pre_220614_221109_220810_jm0450.bsp"].claimed_stop == datetime(
        2022, 11, 9, tzinfo=UTC)
    assert cands["jup365.bsp"].quality == "satellite" and cands["jup365.bsp"].name_order == (0, 65)
    t = datetime(2022, 8, 17, 13, 44, 55, tzinfo=UTC)
    spk = [c for c in cands.values() if c.kind == "spk" and c.quality != "satellite"]
    assert [c.name for c in K.rank_candidates(spk, t)] == [
        "juno_rec_220801_220820_220901.bsp",             # reconstructed first
        "spk_pre_220614_221109_220810_jm0450.bsp",       # then the newest predicted
        "spk_pre_220614_221109_220701_jm0440.bsp",
        "juno_pred_orbit.bsp",                           # undated whole-mission file last
    ]
    late = datetime(2022, 8, 21, 23, 59, tzinfo=UTC)  # the stop day counts whole
    ck = [c for c in cands.values() if c.kind == "ck"]
    assert [c.name for c in K.rank_candidates(ck, late)] == [
        "juno_sc_rec_220815_220821_v02.bc", "juno_sc_rec_220815_220821_v01.bc",
        "juno_sc_nom_220815_220821_v01.bc"]
    assert K.rank_candidates(ck, datetime(2022, 8, 22, tzinfo=UTC)) == []


# ----------------------------------------------------------------------------------------
# Download against a fake NAIF on 127.0.0.1
# ----------------------------------------------------------------------------------------


@dataclass
class FakeNaif:
    root: Path
    url: str
    requests: list[str]

    def put(self, rel: str, source: Path | bytes) -> Path:
        dst = self.root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            dst.write_bytes(source)
        else:
            shutil.copyfile(source, dst)
        return dst

    def file_requests(self) -> list[str]:
        return [r for r in self.requests if not r.endswith("/")]


@pytest.fixture()
def fake_naif(tmp_path, monkeypatch, kernel_dir):
    root = tmp_path / "naif"
    log: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - http.server API
            log.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    naif = FakeNaif(root, f"http://127.0.0.1:{server.server_address[1]}", log)
    for entry in K.load_manifest().generic:
        naif.put(entry.path, kernel_dir / entry.kind / entry.name)
    for listing in ("JUNO/kernels/spk", "JUNO/kernels/ck", "generic_kernels/spk/satellites"):
        (root / listing).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv(K.NAIF_URL_ENV, naif.url)
    yield naif
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_resumes(fake_naif, tmp_path, data_dir, kernel_dir):
    fake_naif.put(f"JUNO/kernels/spk/{PJ44_SPK}", kernel_dir / "spk" / PJ44_SPK)
    fake_naif.put("JUNO/kernels/spk/spk_pre_210101_210301_201231_jm0300.bsp", b"DAF/SPK decoy")
    fake_naif.put("JUNO/kernels/spk/juno_rec_220701_220731_220801.bsp", b"DAF/SPK decoy")
    dest = tmp_path / "dest"
    spans = K.image_spans(data_dir / PJ44_META)
    result = K.fetch_kernels(dest, spans, progress=False)
    manifest = K.load_manifest()
    assert sorted(k.name for k in result.downloaded) == sorted(
        [g.name for g in manifest.generic] + [PJ44_SPK])
    for g in manifest.generic:
        assert K.file_sha256(dest / g.kind / g.name) == g.sha256
    assert (dest / "spk" / PJ44_SPK).read_bytes() == (kernel_dir / "spk" / PJ44_SPK).read_bytes()
    assert not any("decoy" in r or "210101" in r or "220701" in r for r in fake_naif.requests)
    (cov,) = result.coverage
    assert cov.ok and cov.kernel_set is not None and not cov.kernel_set.ck_covered
    assert [f.name for f in cov.kernel_set.of_kind("spk")] == [PJ44_SPK]
    assert not list(dest.rglob("tmp*")), "no temporary files left"

    # Resume: everything present with the right checksum, nothing downloaded again.
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    fake_naif.requests.clear()
    again = K.fetch_kernels(dest, spans, progress=False)
    assert again.downloaded == () and {k.action for k in again.kernels} == {"present"}
    assert fake_naif.file_requests() == []
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == mtimes
    # and the result works offline, from the folder alone
    assert K.select_kernels(dest, spans[0].start_utc, spans[0].stop_utc).spk_covered


def test_fetch_refuses_a_corrupted_file(fake_naif, tmp_path):
    lsk = K.load_manifest().generic_for("lsk")
    served = fake_naif.root / lsk.path
    served.write_bytes(served.read_bytes().replace(b"DELTET/K", b"DELTET/X"))
    dest = tmp_path / "dest"
    with pytest.raises(KernelDownloadError) as err:
        K.fetch_kernels(dest, (), progress=False)
    msg = str(err.value)
    assert "checksum mismatch for naif0012.tls" in msg and lsk.sha256 in msg and "\n" not in msg
    assert not (dest / "lsk" / "naif0012.tls").exists()
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_fetch_replaces_a_damaged_local_copy(fake_naif, tmp_path):
    dest = tmp_path / "dest"
    (dest / "lsk").mkdir(parents=True)
    (dest / "lsk" / "naif0012.tls").write_text("truncated")
    result = K.fetch_kernels(dest, (), progress=False)
    assert "naif0012.tls" in [k.name for k in result.downloaded]
    assert K.file_sha256(dest / "lsk" / "naif0012.tls") == K.load_manifest().generic_for("lsk").sha256


def test_fetch_checks_real_coverage_not_names(fake_naif, tmp_path, data_dir, kernel_dir):
    # A "reconstructed" SPK whose name claims August 2022 but holds the 2016 slice.
    fake_naif.put("JUNO/kernels/spk/juno_rec_220810_220820_220901.bsp",
                  data_dir / "pj01-ck-geometry" / PJ01_SPK)
    fake_naif.put(f"JUNO/kernels/spk/{PJ44_SPK}", kernel_dir / "spk" / PJ44_SPK)
    result = K.fetch_kernels(tmp_path / "dest", K.image_spans(data_dir / PJ44_META), progress=False)
    assert any(n.startswith("juno_rec_220810_220820_220901.bsp: its name claims 2022-08-10–2022-08-20 "
                            "but its coverage misses") for n in result.notes)
    assert PJ44_SPK in [k.name for k in result.downloaded]
    (cov,) = result.coverage
    assert cov.ok and [f.name for f in cov.kernel_set.of_kind("spk")] == [PJ44_SPK]


def _pj01_metadata(data_dir: Path, folder: Path) -> Path:
    label = json.loads((data_dir / PJ44_META).read_text())
    label.update(START_TIME="2016-08-27T09:00:04.129", STOP_TIME="2016-08-27T09:00:10.000",
                 PRODUCT_ID="JNCE_2016240_01C00001_V01", FILE_NAME="JNCE_2016240_01C00001_V01-raw.png")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "99999-Metadata.json"
    path.write_text(json.dumps(label))
    return path


def test_fetch_ck_and_newer_sclk_end_to_end(fake_naif, tmp_path, data_dir, kernel_dir):
    pj01 = data_dir / "pj01-ck-geometry"
    fake_naif.put("JUNO/kernels/spk/juno_rec_160825_160828_161001.bsp", pj01 / PJ01_SPK)
    fake_naif.put("JUNO/kernels/ck/juno_sc_rec_160821_160827_v01.bc", pj01 / PJ01_CK)
    fake_naif.put("JUNO/kernels/ck/juno_sc_rec_160814_160820_v01.bc", b"DAF/CK  decoy")
    fake_naif.put("JUNO/kernels/sclk/jno_sclkscet_00091.tsc", kernel_dir / "sclk" / "jno_sclkscet_00090.tsc")
    meta = _pj01_metadata(data_dir, tmp_path / "products")
    result = K.fetch_kernels(tmp_path / "dest", K.image_spans(meta), progress=False)
    got = {k.name: k.kind for k in result.downloaded}
    assert got["juno_sc_rec_160821_160827_v01.bc"] == "ck"
    assert got["juno_rec_160825_160828_161001.bsp"] == "spk"
    assert got["jno_sclkscet_00091.tsc"] == "sclk"
    assert "juno_sc_rec_160814_160820_v01.bc" not in got
    (cov,) = result.coverage
    assert cov.ok and cov.kernel_set.ck_covered
    assert [f.name for f in cov.kernel_set.of_kind("sclk")] == ["jno_sclkscet_00091.tsc"]
    assert any("jno_sclkscet_00090.tsc not loaded: newer jno_sclkscet_00091.tsc" in n
               for n in cov.kernel_set.notes)


def test_fetch_network_failure_is_one_line(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    monkeypatch.setenv(K.NAIF_URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(KernelDownloadError, match="download failed") as err:
        K.fetch_kernels(tmp_path / "dest", (), progress=False)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def test_cli_list_reports_source_and_coverage(kernel_dir):
    res = CliRunner().invoke(main, ["kernels", "list", "--kernels", str(kernel_dir)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"kernels: {kernel_dir} (from --kernels flag)"
    assert any(line.split()[:3] == ["spk", "predicted", f"spk/{PJ44_SPK}"] for line in lines)
    assert any("JUNO (-61)" in line and "2022-06-14T02:58:50.815 – 2022-11-09T21:38:27.812" in line
               for line in lines)


def test_cli_check_folder_via_env(kernel_dir, data_dir, monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, str(kernel_dir))
    res = CliRunner().invoke(main, ["kernels", "check", str(data_dir / "perijove44")])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"kernels: {kernel_dir} (from $JUNOPROC_KERNELS)"
    assert res.output.count(f"SPK: {PJ44_SPK} (predicted)") == 4
    assert "4 image(s): 4 covered, 0 missing kernels" in res.output


def test_cli_check_missing_exits_nonzero(kernel_dir, data_dir, tmp_path):
    meta = _pj01_metadata(data_dir, tmp_path / "products")
    res = CliRunner().invoke(main, ["kernels", "check", str(meta), "--kernels", str(kernel_dir)])
    assert res.exit_code == 1
    assert "MISSING: no SPK for JUNO (-61) covers 2016-08-27T09:00:03.129" in res.output


def test_cli_errors_are_one_line(tmp_path, kernel_dir):
    runner = CliRunner()
    for args in (["kernels", "list", "--kernels", str(tmp_path / "nope")],
                 ["kernels", "check", str(tmp_path / "nope"), "--kernels", str(kernel_dir)],
                 ["kernels", "check", str(kernel_dir)]):  # no products there
        res = runner.invoke(main, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        err_lines = res.stderr.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("junoproc: error: ")


def test_cli_fetch_then_check_offline(fake_naif, tmp_path, data_dir, kernel_dir):
    fake_naif.put(f"JUNO/kernels/spk/{PJ44_SPK}", kernel_dir / "spk" / PJ44_SPK)
    dest = tmp_path / "dest"
    runner = CliRunner()
    res = runner.invoke(main, ["kernels", "fetch", str(data_dir / PJ44_META), "--kernels", str(dest),
                               "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"downloaded spk   {PJ44_SPK}  <- {fake_naif.url}/JUNO/kernels/spk/{PJ44_SPK}" in res.output
    assert "1 image(s): 1 covered, 0 missing kernels" in res.output
    # offline: the base URL now points nowhere; check needs no network
    res = runner.invoke(main, ["kernels", "check", str(data_dir / PJ44_META), "--kernels", str(dest)],
                        env={K.NAIF_URL_ENV: "http://127.0.0.1:9"})
    assert res.exit_code == 0, res.output


def test_fetch_dry_run_downloads_nothing(fake_naif, tmp_path, data_dir, kernel_dir):
    fake_naif.put(f"JUNO/kernels/spk/{PJ44_SPK}", kernel_dir / "spk" / PJ44_SPK)
    dest = tmp_path / "dest"
    result = K.fetch_kernels(dest, K.image_spans(data_dir / "perijove44"), dry_run=True, progress=False)
    assert {k.action for k in result.kernels} == {"planned"}
    assert [k.name for k in result.kernels].count(PJ44_SPK) == 1  # four images, one file
    assert fake_naif.file_requests() == [] and not dest.exists()
    assert result.coverage == ()


def test_fetch_without_ck_listing_and_for_a_moon(fake_naif, tmp_path, data_dir, kernel_dir):
    shutil.rmtree(fake_naif.root / "JUNO/kernels/ck")  # a mirror without CKs: a note, not a failure
    fake_naif.put(f"JUNO/kernels/spk/{PJ44_SPK}", kernel_dir / "spk" / PJ44_SPK)
    # a "satellite ephemeris" that holds no moon: downloaded for the Io image, then found wanting
    fake_naif.put("generic_kernels/spk/satellites/jup365.bsp", kernel_dir / "spk" / PJ44_SPK)
    fake_naif.put("generic_kernels/spk/satellites/jup344.bsp", b"DAF/SPK older")
    label = json.loads((data_dir / PJ44_META).read_text())
    label.update(TARGET_NAME="IO")
    meta = tmp_path / "io" / "1-Metadata.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps(label))
    result = K.fetch_kernels(tmp_path / "dest", K.image_spans(meta), progress=False)
    assert any("JUNO/kernels/ck/: cannot read the kernel listing" in n for n in result.notes)
    assert {k.name for k in result.downloaded} >= {PJ44_SPK, "jup365.bsp"}
    assert "jup344.bsp" not in {k.name for k in result.kernels}
    (cov,) = result.coverage
    assert not cov.ok and cov.problem.startswith("no SPK for IO (501) covers 2022-08-17T13:44:54.688")


def test_kernels_folder_beside_the_data(tmp_path):
    """`junoproc build data/perijove44` finds data/kernels when nothing else is configured;
    the flag, the variable and the config still win; an empty kernels/ folder is passed over."""
    data = tmp_path / "data"
    (data / "perijove44").mkdir(parents=True)
    (data / "kernels" / "lsk").mkdir(parents=True)
    kdir, source = K.resolve_kernel_dir(None, data=data / "perijove44")
    assert source.kind == "cache"  # a kernels/ folder with no kernel file is not taken
    (data / "kernels" / "lsk" / "naif0012.tls").write_text("KPL/LSK\n")
    for where in (data / "perijove44", data / "perijove44" / "x.zip", data):
        kdir, source = K.resolve_kernel_dir(None, data=where)
        assert (kdir, source.kind) == ((data / "kernels").resolve(), "beside"), where
        assert "beside the data" in str(source)
    assert K.resolve_kernel_dir(None)[1].kind == "cache"  # no data given: unchanged
    (tmp_path / "flag").mkdir()
    assert K.resolve_kernel_dir(str(tmp_path / "flag"), data=data)[1].kind == "flag"
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert K.kernels_beside(deep) is None
