"""Engine dask against engine local (params.yaml `scaleout`, wsss/scaleout/engine.py): every per-image
stage converted to chunks writes byte-identical files and equal metrics (timings aside) on a Dask
LocalCluster; a worker killed mid-chunk costs a retry, not a file. The tiny demo pipeline of
tests/test_pipeline_dvc.py, shards of 2 images so each stage has several chunks."""
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from wsss.config.params import ParamsError, load
from flows import dvc_commands
from wsss.scaleout.engine import KILL_ONCE_ENV, EngineError, local_cluster
from wsss.stores.atomic import PARTIAL
from tests.conftest import REPO
from tests.test_pipeline_dvc import SMALL

TINY = SMALL + ["rounds={}", "pseudo_labels.maps=artifacts/maps", "maps.shard_size=2", "pseudo_labels.shard_size=2",
                "pseudo_labels.superpixels.n_segments=40", "maps.n_overlays=3", "pseudo_labels.n_samples=3",
                "scaleout.chunk_size=1", "scaleout.workers=2"]
TIMINGS = {"seconds", "seconds_per_image", "superpixel_seconds_per_image", "engine", "workers"}
# what each stage writes: its artifact, its reports, its metrics and plots
OUTPUTS = {
    "export_maps": ["artifacts/maps", "reports/maps", "plots/maps_sweep.csv", "plots/maps_per_class.csv"],
    "export_refined": ["artifacts/refined_maps", "reports/refined_maps", "plots/refined_maps_sweep.csv"],
    "pseudo_labels": ["artifacts/pseudo_labels", "reports/pseudo_labels", "plots/pseudo_labels_per_class.csv"],
}
METRICS = {"export_maps": "maps", "export_refined": "refined_maps", "pseudo_labels": "pseudo_labels"}


def files(root: Path, rels: list[str]) -> dict[str, bytes]:
    """{relative path: bytes} of every file (hidden ones too) under the paths."""
    out = {}
    for rel in rels:
        path = root / rel
        for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            out[str(f.relative_to(root))] = f.read_bytes()
    return out


def metrics(root: Path, stage: str) -> dict:
    import json
    return {k: v for k, v in json.loads((root / "metrics" / f"{METRICS[stage]}.json").read_text()).items()
            if k not in TIMINGS}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, kill marker): a worker whose process finds the marker gone dies in its
    next file write (wsss/scaleout/engine.py, the test hook); the marker exists, so none does yet."""
    marker = tmp_path_factory.mktemp("kill") / "killed"
    marker.touch()
    c = local_cluster(2, env={KILL_ONCE_ENV: str(marker)})
    try:
        yield c.scheduler_address, marker
    finally:
        c.close()


def run(work: Path, stage: str, *extra: str) -> dict:
    from tasks.__main__ import run_stage
    here = os.getcwd()
    os.chdir(work)
    try:
        with mock.patch.dict(os.environ, {"WSSS_TRACKING": "off"}):
            return run_stage(stage, load(REPO / "params.yaml", [*TINY, *extra]))
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The upstream stages, once, on engine local: data, manifest, classifier, maps, refiner,
    pseudo labels and a segmenter in one folder."""
    root = tmp_path_factory.mktemp("scaleout")
    for stage in ("demo", "manifest", "train_classifier", "export_maps", "train_refiner", "pseudo_labels",
                  "train_segmenter"):
        run(root, stage)
    return root


def dask_at(cluster) -> list[str]:
    return ["scaleout.engine=dask", f"scaleout.address={cluster[0]}"]


@pytest.mark.parametrize("stage", ["export_maps", "export_refined", "pseudo_labels"])
def test_dask_stage_output_is_byte_identical_to_local(work, cluster, stage):
    run(work, stage)
    local, local_metrics = files(work, OUTPUTS[stage]), metrics(work, stage)
    assert run(work, stage, *dask_at(cluster))["engine"] == "dask"
    remote = files(work, OUTPUTS[stage])
    assert sorted(remote) == sorted(local) and len([f for f in local if "/part-" in f]) >= 3   # several chunks
    assert [f for f in local if remote[f] != local[f]] == []
    assert metrics(work, stage) == local_metrics


def test_dask_val_scoring_equals_local(work, cluster):
    from wsss.dataset import voc
    from wsss.training.checkpoints import CheckpointRef
    from wsss.training.segmentation import evaluate
    params = load(REPO / "params.yaml", TINY)
    manifest, classes, root = voc.read_manifest(work / "artifacts/manifest.parquet")
    rows = voc.split_rows(manifest, "val")
    network = CheckpointRef(str(work / "artifacts/segmenter.pt"), "cpu")
    results = [evaluate(network, work / root, rows, len(classes), params["segmenter"], "cpu", samples=2,
                        scaleout=load(REPO / "params.yaml", [*TINY, *extra])["scaleout"])
               for extra in ([], dask_at(cluster))]
    (plain, crf, samples), (plain_d, crf_d, samples_d) = results
    assert plain.sum() > 0 and crf.sum() == plain.sum()
    assert np.array_equal(plain, plain_d) and np.array_equal(crf, crf_d)
    assert [s[0] for s in samples] == [s[0] for s in samples_d] == [r["id"] for r in rows[:2]]
    for (_, _, preds, _), (_, _, preds_d, _) in zip(samples, samples_d):
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(preds, preds_d))


def test_dask_folder_prediction_is_byte_identical_to_local(work, cluster, tmp_path):
    from wsss.commands.predict import predict_folder
    images = sorted((work / "data/demo/JPEGImages").glob("*.jpg"))[:4]
    src = tmp_path / "in"
    src.mkdir()
    for f in images:
        shutil.copy(f, src / f.name)
    outs = []
    for name, extra in (("local", []), ("dask", dask_at(cluster))):
        scaleout = load(REPO / "params.yaml", [*TINY, *extra])["scaleout"]
        assert predict_folder(src, tmp_path / name, work / "artifacts/segmenter.pt", "cpu", use_crf=True,
                              scaleout=scaleout) == 4
        outs.append(files(tmp_path / name, ["labels", "overlays", "classes.txt"]))
    assert len(outs[0]) == 9 and outs[0] == outs[1]


def test_dask_killed_worker_retries_its_chunk_and_leaves_no_temporaries(work, cluster):
    run(work, "pseudo_labels")
    local = files(work, OUTPUTS["pseudo_labels"])
    address, marker = cluster
    marker.unlink()   # armed: the first worker to write a file now dies with it half-done
    assert run(work, "pseudo_labels", *dask_at(cluster))["engine"] == "dask"
    assert marker.exists()   # a worker did die mid-chunk
    assert files(work, OUTPUTS["pseudo_labels"]) == local
    leftovers = [p for d in ("artifacts", "reports") for p in (work / d).rglob("*")
                 if PARTIAL in p.name or p.name.startswith(".pseudo_labels.")]
    assert leftovers == []


def test_dask_engine_starts_a_local_cluster_when_no_address_is_given():
    from wsss.scaleout.engine import open_engine
    cfg = load(REPO / "params.yaml", ["scaleout.engine=dask", "scaleout.workers=1"])["scaleout"]
    before = dict(os.environ)
    with open_engine(cfg) as engine:
        assert engine.cluster is not None and engine.workers == 1
        assert list(engine.run(lambda task, imap: sum(imap(abs, task)), [[-1, 2], [-3]])) == [3, 3]
        # this process keeps its environment (the nannies set theirs here too), so a later local
        # stage's process pool does not get 1-thread torch and glibc trimming from them
        assert dict(os.environ) == before
        worker_env = list(engine.client.run(lambda: dict(os.environ)).values())[0]
        assert worker_env["OMP_NUM_THREADS"] == "1"          # one torch thread per worker, as designed
        assert "MALLOC_TRIM_THRESHOLD_" not in worker_env   # 20% slower CRF labelling with it
    assert dict(os.environ) == before


def test_dask_workers_run_torch_with_worker_threads():
    """scaleout.worker_threads: each worker's torch threads (a chunk at a time per worker), and a
    LocalCluster of cores // worker_threads workers unless scaleout.workers says otherwise."""
    from wsss.scaleout.engine import open_engine

    def threads(task, imap):
        import torch
        return torch.get_num_threads()

    for width, workers in ((1, 2), (2, 1)):
        cfg = load(REPO / "params.yaml", ["scaleout.engine=dask", f"scaleout.workers={workers}",
                                          f"scaleout.worker_threads={width}"])["scaleout"]
        with open_engine(cfg) as engine:
            assert engine.workers == workers
            assert list(engine.run(threads, [0, 1, 2])) == [width] * 3
    cfg = load(REPO / "params.yaml", ["scaleout.engine=dask", "scaleout.worker_threads=2"])["scaleout"]
    with mock.patch("os.cpu_count", return_value=4), open_engine(cfg) as engine:
        assert engine.workers == 2                     # 4 cores // 2 threads


def test_dask_refuses_prm_export_with_a_clear_error(work):
    with pytest.raises(EngineError, match="maps.method prm runs on scaleout.engine local only"):
        run(work, "export_maps", "maps.method=prm", "scaleout.engine=dask")


def test_dask_params_are_checked_by_key():
    with pytest.raises(ParamsError, match="scaleout.address: is set, but scaleout.engine is 'local'"):
        load(REPO / "params.yaml", ["scaleout.address=tcp://h:8786"])
    with pytest.raises(ParamsError, match="scaleout.engine: 'spark' is not one of"):
        load(REPO / "params.yaml", ["scaleout.engine=spark"])
    with pytest.raises(ParamsError, match="scaleout.address: 'h:8786' does not match"):
        load(REPO / "params.yaml", ["scaleout.engine=dask", "scaleout.address=h:8786"])


def test_dask_address_form_field_becomes_scaleout_overrides_on_the_dvc_command():
    over = dvc_commands.collect_overrides({"epochs": None, "dask_address": "tcp://10.0.0.5:8786"}, None)
    assert over == {"scaleout.engine": "dask", "scaleout.address": "tcp://10.0.0.5:8786"}
    assert dvc_commands.stage_command("pseudo_labels", over) == [
        "exp", "run", "-S", "scaleout.address='tcp://10.0.0.5:8786'", "-S", "scaleout.engine='dask'", "pseudo_labels"]
    assert dvc_commands.collect_overrides({"dask_address": "local"}, None)["scaleout.address"] == ""
    assert dvc_commands.collect_overrides({"dask_address": None}, None) == {}
