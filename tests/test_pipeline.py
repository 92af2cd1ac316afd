"""The build: a folder of products end to end, failure isolation, resume, config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from junoproc import pipeline
from junoproc.cli import main
from junoproc.errors import JunoprocError
from junoproc.products import find_products

PRODUCT = "JNCE_2022229_44C00032_V01"


@pytest.fixture(scope="module")
def batch(tmp_path_factory, data_dir: Path):
    """A user's folder: one good image set, one truncated raw PNG with its metadata,
    one metadata-only download; built once with 2 workers."""
    folder = tmp_path_factory.mktemp("pj44")
    shutil.copytree(data_dir / "perijove44" / "13544-ImageSet", folder / "13544-ImageSet")
    shutil.copy(data_dir / "perijove44" / "13547-Data.zip", folder)
    bad = folder / "13541-ImageSet"
    shutil.copytree(data_dir / "perijove44" / "13541-ImageSet", bad)
    png = next((bad / "ImageSet").glob("*-raw.png"))
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 3])  # truncated download
    out = tmp_path_factory.mktemp("out")
    options = pipeline.BuildOptions(out_dir=str(out), kernels=str(data_dir / "kernels"), jobs=2,
                                    projections=("perspective", "equirectangular"))
    report = pipeline.build(folder, options, progress=False)
    return folder, out, options, report


def test_good_product_is_built_with_its_sidecar(batch):
    _, out, _, report = batch
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
    # no hidden partial folders left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_one_bad_product_does_not_stop_the_batch(batch):
    _, _, _, report = batch
    by_id = {r.product_id: r for r in report.results}
    bad = by_id["JNCE_2022229_44C00029_V01"]
    assert bad.status == "failed"
    assert "\n" not in bad.message and "raw.png" in bad.message
    assert by_id["JNCE_2022229_44C00035_V01"].status == "incomplete"  # metadata only
    assert not report.ok
    assert "failed" in report.table() and PRODUCT in report.table()


def test_rerun_skips_finished_products_and_force_redoes(batch, tmp_path):
    folder, out, options, _ = batch
    sidecar = out / PRODUCT / f"{PRODUCT}.json"
    before = sidecar.stat().st_mtime_ns
    again = pipeline.build(folder, options, progress=False)
    assert {r.product_id: r.status for r in again.results}[PRODUCT] == "skipped"
    assert sidecar.stat().st_mtime_ns == before


def test_interrupted_product_is_redone(batch):
    """A killed build leaves only a hidden partial folder; the next run redoes that product."""
    folder, out, options, _ = batch
    final = out / PRODUCT
    partial = out / f".{PRODUCT}.partial-99999"
    final.rename(partial)  # as if killed before the final rename
    result = pipeline.process_product(
        next(e for e in find_products(folder) if e.product_id == PRODUCT),
        options)
    assert result.status == "done"
    assert (final / f"{PRODUCT}.json").is_file()
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
