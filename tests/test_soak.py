"""Soak test: fifty pipeline runs in one process must not leak memory or files.

A service that makes mosaics all day runs the pipeline again and again in
one process. This runs it 50 times on small associations (in memory and
``on_disk``, with a failing association every fifth run) and measures the
resident memory and the number of open file descriptors after each run.
After the warm-up runs (caches, imports, first allocations) neither may
grow by more than 5%.

Slow (several minutes): ``pytest -m slow tests/test_soak.py``.
"""

import gc
import logging
import os
from pathlib import Path

import pytest

from romosaic.errors import RomosaicInputError
from romosaic.pipeline import MosaicPipeline
from romosaic.simulate import simulate_association

RUNS = 50
WARM_UP = 5
ALLOWED_GROWTH = 0.05

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]


def _rss_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _open_files():
    return len(os.listdir("/proc/self/fd"))


def _soak(datasets, broken, directory):
    """Run the pipeline RUNS times; RSS and open files after each run."""
    rss, files = [], []
    for run in range(RUNS):
        if run % 5 == 4:
            with pytest.raises(RomosaicInputError, match="truncated or corrupt"):
                MosaicPipeline.call(str(broken / "broken_asn.json"), save_results=True,
                                    output_dir=str(directory / "out_broken"))
        else:
            dataset = datasets[run % len(datasets)]
            mosaic, catalog, segmentation = MosaicPipeline.call(
                str(dataset.asn_path), save_results=True, output_dir=str(directory / "out"),
                on_disk=run % 2 == 1)
            assert (mosaic.weight > 0).any()
            del mosaic, catalog, segmentation
        gc.collect()
        rss.append(_rss_bytes())
        files.append(_open_files())
    return rss, files


def test_fifty_runs_do_not_leak_memory_or_file_handles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = [simulate_association(tmp_path / f"set{i}", n_exposures=2, size=96, seed=40 + i,
                                     product_name=f"soak{i}")
                for i in range(3)]
    broken = tmp_path / "broken"
    broken.mkdir()
    data = datasets[0].cal_paths[0].read_bytes()
    (broken / "cut_cal.asdf").write_bytes(data[: len(data) * 2 // 3])
    (broken / "broken_asn.json").write_text(
        '{"products": [{"name": "broken", "members": [{"expname": "cut_cal.asdf"}]}]}')
    # pytest keeps every log record it captures: with stpipe's INFO listing of
    # every parameter of every run, that alone would grow the memory.
    logging.disable(logging.WARNING)
    try:
        rss, files = _soak(datasets, broken, tmp_path)
    finally:
        logging.disable(logging.NOTSET)

    baseline_rss = max(rss[WARM_UP - 3:WARM_UP])
    baseline_files = max(files[WARM_UP - 3:WARM_UP])
    final_rss = max(rss[-3:])
    final_files = max(files[-3:])
    report = (f"RSS {baseline_rss / 2**20:.1f} -> {final_rss / 2**20:.1f} MiB "
              f"({100 * (final_rss / baseline_rss - 1):+.1f}%), open files {baseline_files} -> "
              f"{final_files}; RSS after each run (MiB): {[round(r / 2**20) for r in rss]}")
    print(report)
    assert final_rss <= baseline_rss * (1 + ALLOWED_GROWTH), report
    assert final_files <= baseline_files * (1 + ALLOWED_GROWTH), report
    # Nothing is left behind in the output or working directories either.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{d.product_name}{s}" for d in datasets
        for s in ("_coadd.asdf", "_cat.parquet", "_segm.asdf"))
    assert not (tmp_path / "out_broken").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out", "set0", "set1",
                                                          "set2"]
