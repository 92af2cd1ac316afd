"""The build: a folder of products end to end, failure isolation, resume, config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from junoproc import pipeline
from junoproc.cli import main
from junoproc.errors import JunoprocError
from junoproc.geometry import Target
from junoproc.io import LinearMap
from junoproc.products import find_products

PRODUCT = "JNCE_2022229_44C00032_V01"


PRODUCT_2 = "JNCE_2022229_44C00029_V01"  # the other PJ44 colour image: one balance for both
BAD = "JNCE_2022229_44M00040_V01"


@pytest.fixture(scope="module")
def batch(tmp_path_factory, data_dir: Path):
    """A user's folder: two good PJ44 colour image sets, one truncated raw PNG with its
    metadata, one metadata-only download; built once with 2 workers."""
    import zipfile

    folder = tmp_path_factory.mktemp("pj44")
    for name in ("13541-ImageSet", "13544-ImageSet"):
        shutil.copytree(data_dir / "perijove44" / name, folder / name)
    shutil.copy(data_dir / "perijove44" / "13547-Data.zip", folder)
    bad = folder / "13552-ImageSet"
    for name in ("13552-ImageSet.zip", "13552-Data.zip"):
        with zipfile.ZipFile(data_dir / "perijove44" / name) as zf:
            zf.extractall(bad)
    png = next((bad / "ImageSet").glob("*-raw.png"))
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 3])  # truncated download
    out = tmp_path_factory.mktemp("out")
    options = pipeline.BuildOptions(out_dir=str(out), kernels=str(data_dir / "kernels"), jobs=2,
                                    projections=("perspective", "equirectangular"))
    report = pipeline.build(folder, options, progress=False)
    return folder, out, options, report


def test_good_product_is_built_with_its_sidecar(batch):
    _, out, options, report = batch
    by_id = {r.product_id: r for r in report.results}
    good = by_id[PRODUCT]
    assert good.status == "done", good.message
    assert good.limb_rms_px is not None and good.limb_rms_px < 0.5
    product_dir = out / PRODUCT
    for name in (f"{PRODUCT}-perspective.png", f"{PRODUCT}-perspective-16bit.tif",
                 f"{PRODUCT}-perspective-linear.tif", f"{PRODUCT}-equirectangular.png",
                 f"{PRODUCT}.json"):
        assert (product_dir / name).is_file(), name
    sidecar = json.loads((product_dir / f"{PRODUCT}.json").read_text())
    assert sidecar["product_id"] == PRODUCT
    assert sidecar["kernels"] and sidecar["pointing"] and sidecar["maps"]["perspective"]
    assert set(sidecar["stage_seconds"]) >= {"decode", "calibrate", "pointing", "write"}
    # no hidden partial folders left behind, nor the enhancement's scratch input in the product
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert not [p for p in product_dir.iterdir() if p.name.startswith(".")]
    # the map is on the perijove lattice: edges on whole pixels of 1/10 deg
    grid = sidecar["maps"]["equirectangular"]["map"]
    for key in ("lon_left_east_deg", "lat_top_deg", "lat_bottom_deg"):
        assert abs(grid[key] * 10 - round(grid[key] * 10)) < 1e-6, (key, grid[key])
    assert set(sidecar["stage_cpu_seconds"]) == set(pipeline.product_stages(options))
    # no CK for PJ44: both colour images (the bad one never got to its limb) share a spin axis
    assert sidecar["joint"]["products"] == sorted([PRODUCT, PRODUCT_2])
    assert json.loads(sidecar["pointing"])["joint"] == sidecar["joint"]
    assert sidecar["stage_cpu_seconds"]["limbs"] > 0 and sidecar["stage_cpu_seconds"]["pointing"] > 0
    assert sidecar["stage_cpu_seconds"]["align_bands"] > 0  # measured in the worker, after the solve


def test_enhancement_input_is_saved_and_mapped_back_exactly(tmp_path):
    """What the finishing worker enhances instead of the linear TIFFs: the map and the
    backplanes enhancement reads (sensor saturation included), bit for bit; writing into
    the mapped arrays does not change the files."""
    from junoproc.enhance import SATURATED_BACKPLANE

    rng = np.random.default_rng(1)
    data = rng.random((5, 7, 3)).astype(np.float32)
    data[0, 0] = np.nan
    planes = {k: rng.random((5, 7)).astype(np.float32) for k in pipeline.ENHANCE_BACKPLANES}
    planes[SATURATED_BACKPLANE] = rng.integers(0, 4, (5, 7)).astype(np.uint8)
    planes["weight"] = np.ones((5, 7), np.float32)  # not read by enhancement: not saved
    m = LinearMap(data, ("BLUE", "GREEN", "RED"), planes, {"map": {"projection": "perspective"}})
    pipeline._save_for_enhancement(tmp_path, "perspective", m)
    back = pipeline._load_for_enhancement(tmp_path, "perspective", m.band_names, m.sidecar)
    assert np.array_equal(back.data, data, equal_nan=True) and back.band_names == m.band_names
    assert set(back.backplanes) == set(pipeline.ENHANCE_BACKPLANES) and SATURATED_BACKPLANE in back.backplanes
    for k, v in back.backplanes.items():
        assert v.dtype == planes[k].dtype and np.array_equal(v, planes[k]), k
    assert back.sidecar == m.sidecar
    back.data[1, 1] = 5.0
    again = pipeline._load_for_enhancement(tmp_path, "perspective", m.band_names, m.sidecar)
    assert again.data[1, 1, 0] == data[1, 1, 0]


def test_joint_solve_returns_each_products_solution_or_its_error(monkeypatch):
    """One solve_from_limbs call over every detected product, its kernels loaded once per
    distinct set; a refused product comes back as its one-line failure, the others go on."""
    from contextlib import contextmanager

    from junoproc import kernels, pointing
    from junoproc.errors import PointingQualityError

    loaded: list[tuple[str, ...]] = []

    @contextmanager
    def furnished(kset):
        loaded.append(kset.paths)
        yield kset

    def solve_from_limbs(observations, **kw):
        assert kw["on_error"] == "return"
        return ["sol-" + o for o in observations[:-1]] + [
            PointingQualityError("limb too short", path="x.png", hint="use a CK")]

    monkeypatch.setattr(kernels, "furnished", furnished)
    monkeypatch.setattr(pointing, "solve_from_limbs", solve_from_limbs)

    class KSet:
        def __init__(self, *paths):
            self.paths = paths

    dets = [pipeline.Detected(f"P{k}", f"obs{k}", KSet("a", "b") if k < 2 else KSet("c"),
                              {"limbs": 1.0}, {"limbs": 0.5}) for k in range(3)]
    events: list[tuple[str, str]] = []
    options = pipeline.BuildOptions()
    out = pipeline.solve_jointly(dets, options, on_stage=lambda pid, st, i, n: events.append((pid, st)))
    assert [s for _, s in out][:2] == ["sol-obs0", "sol-obs1"]
    assert loaded == [("a", "b"), ("c",)]
    assert events == [(f"P{k}", "pointing") for k in range(3)]
    for d, _ in out:
        assert d.stage_seconds["limbs"] == 1.0 and d.stage_cpu_seconds["limbs"] == 0.5
        assert d.stage_seconds["pointing"] >= 0 and "pointing" in d.stage_cpu_seconds
    failed = pipeline._solve_failed(out[2][0], out[2][1], options)
    assert failed.status == "failed" and failed.product_id == "P2"
    assert failed.message == "x.png: limb too short (use a CK)"
    assert failed.seconds == 1.0


def test_folder_gets_contact_sheet_and_mosaics(batch):
    _, out, _, report = batch
    names = sorted(Path(p).name for p in report.extras)
    assert names == ["contact-sheet.png", "mosaic-RGB-equirectangular.png",
                     "mosaic-RGB-polar-north.png"], names  # 44C00032 looks at the north pole
    from junoproc import io

    polar = io.read_linear_map(out / "mosaic-RGB-polar-north-linear.tif")
    assert polar.sidecar["map"]["projection"] == "polar" and polar.band_names == ("BLUE", "GREEN", "RED")
    # the polar mosaic shows what the cylindrical one shows, where it shows it
    eq = io.read_linear_map(out / "mosaic-RGB-equirectangular-linear.tif", backplanes=())
    g = eq.sidecar["map"]
    lat, lon = polar.backplanes["lat_centric_deg"], polar.backplanes["lon_east_deg"]
    hit = np.isfinite(lat)
    row = np.floor((g["lat_top_deg"] - lat[hit]) * g["px_per_deg"]).astype(int)
    # the cylindrical mosaic is cut to its data (it may cross 0 deg): columns east of its left edge
    col = np.floor((lon[hit] - g["lon_left_east_deg"]) % 360 * g["px_per_deg"]).astype(int)
    inside = (row >= 0) & (row < g["rows"]) & (col < g["columns"])
    seen_eq = np.zeros(len(row), bool)
    seen_eq[inside] = np.isfinite(eq.data[row[inside], col[inside]]).all(axis=1)
    seen_polar = np.isfinite(polar.data[hit]).all(axis=1)
    assert seen_polar.sum() > 100_000 and (seen_eq == seen_polar).mean() > 0.99


def test_one_bad_product_does_not_stop_the_batch(batch):
    _, _, _, report = batch
    by_id = {r.product_id: r for r in report.results}
    bad = by_id[BAD]
    assert bad.status == "failed"
    assert "\n" not in bad.message and "raw.png" in bad.message
    assert by_id["JNCE_2022229_44C00035_V01"].status == "incomplete"  # metadata only
    assert not report.ok
    assert "failed" in report.table() and PRODUCT in report.table()


def test_one_colour_balance_per_perijove(batch):
    """Both PJ44 colour images are enhanced with ONE balance measured over both, recorded
    in both sidecars; the composite is exactly enhance(map, balance=that), and differs
    from the image balanced alone."""
    from junoproc import io
    from junoproc.enhance import ColourBalance, colour_balance_from, enhance

    _, out, options, report = batch
    sides = {p: json.loads((out / p / f"{p}.json").read_text()) for p in (PRODUCT, PRODUCT_2)}
    shared = [s["colour_balance"] for s in sides.values()]
    assert shared[0]["balance"] is not None and shared[0] == shared[1]
    assert shared[0]["products"] == sorted([PRODUCT, PRODUCT_2]) and shared[0]["balance"]["n_images"] == 2
    assert (shared[0]["perijove"], shared[0]["filter_set"]) == (44, "RGB")
    assert all(s["stage_cpu_seconds"]["balance"] > 0 for s in sides.values())
    bal = ColourBalance.from_dict(shared[0]["balance"])
    lm = io.read_linear_map(out / PRODUCT / f"{PRODUCT}-equirectangular-linear.tif",
                            backplanes=pipeline.ENHANCE_BACKPLANES)
    png = io.read_image(out / PRODUCT / f"{PRODUCT}-equirectangular.png")
    again = enhance(lm, preset=options.preset, perijove=44, balance=bal)
    assert np.array_equal(again.rgb8[..., :3], png[..., :3])
    # 44C00032 alone would be stretched to its own, dimmer white (measured: 485 vs 645)
    alone = colour_balance_from([lm], preset=options.preset, perijove=44)
    assert alone.white["GREEN"] < 0.9 * bal.white["GREEN"]


def test_resume_solves_the_pass_with_the_built_products(batch, tmp_path, data_dir: Path):
    """Only 44M00040 left to build (no CK; its limb alone leaves the spin axis ambiguous and
    is refused): the resumed build re-detects the finished 44C00029 and 44C00032 for the
    joint solve of the pass, builds 44M00040 on their shared axis, and rewrites nothing of
    theirs. The batch's finished products are hard-linked into a fresh output folder (as
    a build that had only 44M00040 left, e.g. after its outputs were deleted)."""
    _, out, options, _ = batch
    resumed = tmp_path / "out"
    resumed.mkdir()
    for pid in (PRODUCT, PRODUCT_2):
        shutil.copytree(out / pid, resumed / pid, copy_function=os.link)
    kept = {pid: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (resumed / pid).iterdir()}
            for pid in (PRODUCT, PRODUCT_2)}
    options = replace(options, out_dir=str(resumed), projections=("equirectangular",), mosaic=False)
    report = pipeline.build(data_dir / "perijove44", options, progress=False)
    by_id = {r.product_id: r for r in report.results}
    assert by_id[BAD].status == "done", by_id[BAD].message
    assert by_id[PRODUCT].status == by_id[PRODUCT_2].status == "skipped"
    side = json.loads((resumed / BAD / f"{BAD}.json").read_text())
    assert side["joint"]["products"] == sorted([BAD, PRODUCT, PRODUCT_2])
    assert side["joint"]["spin_axis_shared"]
    assert by_id[BAD].limb_rms_px is not None and by_id[BAD].limb_rms_px < 0.5
    assert side["stage_cpu_seconds"]["pointing"] > 0  # the whole joint solve, one product built
    for pid in (PRODUCT, PRODUCT_2):
        assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (resumed / pid).iterdir()} \
            == kept[pid]
    assert not [p for p in resumed.iterdir() if p.name.startswith(".")]


def test_rerun_skips_finished_products_and_force_redoes(batch, tmp_path):
    folder, out, options, _ = batch
    sidecar = out / PRODUCT / f"{PRODUCT}.json"
    before = sidecar.stat().st_mtime_ns
    again = pipeline.build(folder, options, progress=False)
    assert {r.product_id: r.status for r in again.results}[PRODUCT] == "skipped"
    assert sidecar.stat().st_mtime_ns == before


def test_resumed_build_reuses_the_perijoves_balance(batch, monkeypatch):
    """A product left half-built by a killed run is redone alone by the next run, with the
    balance its perijove's built products recorded (one balance per perijove stays one)."""
    folder, out, options, _ = batch
    recorded = json.loads((out / PRODUCT / f"{PRODUCT}.json").read_text())["colour_balance"]
    (out / PRODUCT_2).rename(out / f".{PRODUCT_2}.partial-99999")  # killed before the rename
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(pipeline._Progress, "stage",
                        lambda self, pid, stage, step, total: seen.append((pid, stage)))
    options = replace(options, projections=("perspective",), jobs=1, mosaic=False)
    report = pipeline.build(folder, options, progress=False)
    by_id = {r.product_id: r.status for r in report.results}
    assert by_id[PRODUCT_2] == "done" and by_id[PRODUCT] == "skipped"
    redone = json.loads((out / PRODUCT_2 / f"{PRODUCT_2}.json").read_text())["colour_balance"]
    assert redone["balance"] == recorded["balance"] and redone["reused_for"] == [PRODUCT_2]
    # the per-image bar's steps, in order (the balance is measured in the build process)
    assert [st for pid, st in seen if pid == PRODUCT_2] == \
        [st for st in pipeline.product_stages(options) if st != "balance"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_interrupted_product_is_redone(batch):
    """A killed build leaves only a hidden partial folder; the next run redoes that product."""
    folder, out, options, _ = batch
    final = out / PRODUCT
    partial = out / f".{PRODUCT}.partial-99999"
    final.rename(partial)  # as if killed before the final rename
    stages: list[str] = []
    options = replace(options, projections=("perspective",))  # what is redone does not matter here
    result = pipeline.process_product(
        next(e for e in find_products(folder) if e.product_id == PRODUCT),
        options, on_stage=lambda pid, stage, step, total: stages.append(stage))
    assert result.status == "done"
    # the per-image progress bar's steps; alone, ``pointing`` detects, solves and aligns,
    # and the linear maps are written beside the enhancement (after the balance)
    alone = [st for st in pipeline.product_stages(options)
             if st not in ("limbs", "align_bands", "write_linear")]
    alone.insert(alone.index("read_linear") + 1, "write_linear")
    assert stages == alone
    assert (final / f"{PRODUCT}.json").is_file()
    # the linear map, written beside the enhancement from the map in memory, is complete:
    # enhanced again with the recorded balance it gives the composite written; the planes
    # the file leaves out (computed by formula) come back
    from junoproc import io
    from junoproc.enhance import ColourBalance, enhance

    side = json.loads((final / f"{PRODUCT}.json").read_text())
    assert {f"{PRODUCT}-perspective-linear.tif", f"{PRODUCT}-perspective-linear-backplanes.tif",
            f"{PRODUCT}-perspective-linear.json"} <= set(side["outputs"])
    lm = io.read_linear_map(final / f"{PRODUCT}-perspective-linear.tif")
    assert {"lat_graphic_deg", "lon_west_deg", "resolution_km_per_px"} <= set(lm.backplanes)
    again = enhance(lm, preset=options.preset, perijove=44,
                    balance=ColourBalance.from_dict(side["colour_balance"]["balance"]))
    assert np.array_equal(again.rgb8[..., :3], io.read_image(final / f"{PRODUCT}-perspective.png")[..., :3])
    shutil.rmtree(partial)


def test_cli_build_exit_code_and_table(batch):
    folder, out, _, _ = batch
    runner = CliRunner()
    res = runner.invoke(main, ["build", str(folder), "-o", str(out), "-j", "1"])
    assert res.exit_code == 1  # the truncated product failed
    assert "skipped" in res.output and "Traceback" not in res.output


def test_config_file_sets_defaults_and_rejects_unknown_keys(tmp_path):
    (tmp_path / "junoproc.toml").write_text('[build]\npreset = "natural"\njobs = 1\n')
    cfg = pipeline.load_config(tmp_path)
    opts = pipeline.options_with_config(pipeline.BuildOptions(), cfg, explicit={"jobs"})
    assert opts.preset == "natural" and opts.jobs == 0  # explicit CLI value is not overridden
    (tmp_path / "junoproc.toml").write_text('[build]\nbogus = 1\n')
    with pytest.raises(JunoprocError, match="bogus"):
        pipeline.options_with_config(pipeline.BuildOptions(), pipeline.load_config(tmp_path), set())


def test_build_finds_the_kernels_beside_the_folder_it_builds(tmp_path, monkeypatch):
    """No --kernels, variable or config: a kernels/ folder beside the data is used (not
    beside a product's own file, which is too deep in an unzipped image set), and named so."""
    monkeypatch.delenv("JUNOPROC_KERNELS", raising=False)
    monkeypatch.setenv("JUNOPROC_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "data" / "kernels").mkdir(parents=True)
    (tmp_path / "data" / "kernels" / "naif0012.tls").write_text("\\begindata\n")
    folder = tmp_path / "data" / "perijove44"
    png = folder / "13544-ImageSet" / "ImageSet" / "JNCE_2022229_44C00032_V01-raw.png"
    png.parent.mkdir(parents=True)
    entry = SimpleNamespace(product_id="P", raw=SimpleNamespace(path=str(png)))
    kdir, source = pipeline._kernel_dir(entry, pipeline.BuildOptions(data_folder=str(folder)))
    assert kdir == (tmp_path / "data" / "kernels").resolve() and source.kind == "beside"
    kdir, source = pipeline._kernel_dir(entry, pipeline.BuildOptions(data_folder=str(folder),
                                                                     kernels=str(tmp_path)))
    assert kdir == tmp_path and source.kind == "flag"


def test_contact_sheet_tiles_images(tmp_path):
    import cv2
    import numpy as np

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.full((50, 80, 3), 60 * (i + 1), np.uint8))
        paths.append(p)
    sheet = pipeline.contact_sheet(paths, tile_px=100, columns=2)
    assert sheet.shape == (200, 200, 3)
    assert sheet[50, 50].tolist() == [60, 60, 60] and sheet[50, 150].tolist() == [120, 120, 120]


def test_polar_mosaic_puts_every_latitude_and_longitude_where_projection_says():
    """The build's mosaics (projection.perijove_mosaics) of a map whose bands ARE
    planetocentric latitude and cos/sin of longitude: every polar pixel must read back
    projection's own lat/lon of that pixel."""
    from junoproc.geometry import lonlat_from_body
    from junoproc.projection import MapGrid, grid_surface_points, perijove_mosaics

    ppd = 4.0
    rows, cols = int(70 * ppd), int(360 * ppd)  # north of 20 S
    lat = 90.0 - (np.arange(rows) + 0.5) / ppd
    lon = (np.arange(cols) + 0.5) / ppd
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    data = np.stack([lat2, np.cos(np.radians(lon2)), np.sin(np.radians(lon2))], axis=-1).astype(np.float32)
    data[lat2 < 30.0] = np.nan  # seen down to 30 N
    grid = {"projection": "equirectangular", "rows": rows, "columns": cols, "target": "JUPITER",
            "target_naif_id": 599, "body_frame": "IAU_JUPITER", "radii_km": [71492.0, 71492.0, 66854.0],
            "longitude": "System III west", "latitude": "planetocentric", "px_per_deg": ppd,
            "lon_left_east_deg": 0.0, "lon_left_deg": 360.0, "lon_right_deg": 0.0, "lat_top_deg": 90.0,
            "lat_bottom_deg": 90.0 - rows / ppd}
    m = LinearMap(data, ("LAT", "COS", "SIN"), {"weight": np.ones((rows, cols), np.float32)}, {"map": grid})
    mosaics = perijove_mosaics([m])
    assert sorted(mosaics) == ["LAT+COS+SIN-equirectangular", "LAT+COS+SIN-polar-north"]
    polar = mosaics["LAT+COS+SIN-polar-north"]
    g = polar.sidecar["map"]
    assert g["pole"] == "north" and g["radius_deg"] == 60.0 and polar.data.shape[:2] == (480, 480)
    target = Target("JUPITER", 599, "IAU_JUPITER", (71492.0, 71492.0, 66854.0))
    pgrid = MapGrid("polar", polar.data.shape[:2], target, "west", "centric",
                    {k: g[k] for k in ("px_per_deg", "pole", "kind", "radius_deg")})
    pos, hit = grid_surface_points(pgrid)
    ll = lonlat_from_body(pos[hit], target)
    got = polar.data[hit]
    ok = np.isfinite(got).all(axis=1)
    inside = ll["lat_centric_deg"] > 30.5
    assert ok[inside].all() and not ok[ll["lat_centric_deg"] < 29.5].any()
    assert np.abs(got[ok, 0] - ll["lat_centric_deg"][ok]).max() < 1e-3
    dlon = np.degrees(np.arctan2(got[ok, 2], got[ok, 1])) - ll["lon_east_deg"][ok]
    assert np.abs((dlon + 180) % 360 - 180)[ll["lat_centric_deg"][ok] < 89].max() < 0.05


def _threads_in_worker() -> tuple[str | None, str | None, int]:
    import cv2

    return os.environ.get("JUNOPROC_THREADS"), os.environ.get("OMP_NUM_THREADS"), cv2.getNumThreads()


def _threads_of_a_task(on_stage=None) -> tuple[str | None, str | None, int]:
    return _threads_in_worker()


def _threads_alone_in_worker() -> tuple[str | None, str | None, int]:
    return pipeline._in_worker(_threads_of_a_task)


def test_workers_use_their_share_of_the_cores():
    cores = pipeline._cores()
    with pipeline._worker_pool(cores) as (pool, _):
        assert pool.submit(_threads_in_worker).result(timeout=60) == ("1", "1", 1)
        # a task alone in the pool (the tail of a build) takes every core
        assert pool.submit(_threads_alone_in_worker).result(timeout=60) == (str(cores), str(cores), cores)


def test_a_workers_threads_follow_the_busy_workers(monkeypatch):
    class Busy:
        value = 1

    seen: list[int] = []
    monkeypatch.setattr(pipeline, "_POOL_BUSY", Busy)
    monkeypatch.setattr(pipeline, "_CORES", 4)
    monkeypatch.setattr(pipeline, "_THREADS", 0)
    monkeypatch.setattr(pipeline, "limit_threads", seen.append)
    for busy in (1, 2, 2, 3, 5, 1):
        Busy.value = busy
        pipeline._share_cores()
    assert seen == [4, 2, 1, 4]  # changed only when the share changes; at least one


def test_second_phase_order_biggest_group_then_biggest_image():
    """After the joint solve: the group with the most frames first (it is balanced,
    finished and mosaicked while the others project), in it the image with the most."""
    def det(pid: str, frames: int) -> pipeline.Detected:
        return pipeline.Detected(pid, SimpleNamespace(meta=SimpleNamespace(n_frames=frames)), None, {}, {})

    dets = [det("C29", 18), det("M40", 36), det("C32", 22)]
    group_of = {"C29": (44, "RGB"), "C32": (44, "RGB"), "M40": (44, "METHANE")}
    key = pipeline._group_frames(dets, group_of)
    assert [d.product_id for d in sorted(dets, key=lambda d: key((d, None)), reverse=True)] == \
        ["C32", "C29", "M40"]


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout_s: float = 180.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"build exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_build_resumes_without_redoing_or_corrupting(tmp_path, data_dir: Path, kernel_dir: Path):
    """Real `junoproc build` processes on two PJ43 products: SIGINT after the first product,
    SIGKILL of the build (not its workers) during the second, then a full run."""
    folder = tmp_path / "pj43"
    folder.mkdir()
    shutil.copytree(data_dir / "perijove43" / "13537-ImageSet", folder / "13537-ImageSet")
    for name in ("13540-ImageSet.zip", "13540-Data.zip"):
        (folder / name).symlink_to(data_dir / "perijove43" / name)
    ids = sorted(e.product_id for e in find_products(folder))
    assert len(ids) == 2
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "junoproc.cli", "build", str(folder), "-o", str(out), "--kernels",
           str(kernel_dir), "--projection", "perspective", "--no-mosaic", "--no-progress"]

    def start(jobs: int) -> subprocess.Popen:
        return subprocess.Popen([*cmd, "-j", str(jobs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    def finished() -> list[str]:
        return [i for i in ids if (out / i / f"{i}.json").is_file()]

    def visible() -> set[str]:  # product folders
        return {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}

    # 1. Ctrl-C (SIGINT) once the first product is complete, in-process (-j 1)
    proc = start(1)
    _wait_for(lambda: len(finished()) == 1, proc, "the first product")
    first = finished()[0]
    second = next(i for i in ids if i != first)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert visible() == {first}
    assert not list(out.glob(".*")), "the interrupted product left a partial folder"
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / first).iterdir()}

    # 2. SIGKILL of the build while a worker (-j 2) writes the second product
    proc = start(2)
    _wait_for(lambda: any(out.glob(f".{second}.partial-*")), proc, "the second product's worker")
    partial = next(out.glob(f".{second}.partial-*"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    worker = int(partial.name.rsplit("-", 1)[1])
    t_end = time.monotonic() + 30
    while pipeline._alive(worker) and time.monotonic() < t_end:
        time.sleep(0.05)
    assert not pipeline._alive(worker), "the worker outlived the killed build"
    assert visible() == {first}  # what the kill left is hidden, not a product

    # 3. run again: the first product untouched, the second built, nothing hidden left
    proc = start(2)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert visible() == {first, second} and not list(out.glob(".*"))
    assert (out / "contact-sheet.png").is_file()
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / first).iterdir()} == kept
    rows = {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.startswith("JNCE")}
    assert rows == {first: "skipped", second: "done"}
    assert json.loads((out / second / f"{second}.json").read_text())["product_id"] == second
