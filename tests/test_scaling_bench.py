"""benchmarks/scaling.py measures what it says: a worker's memory counts in the stage's tree, and
the synthetic data set is the first N of the largest (no timing is asserted here)."""
import os
import sys
from pathlib import Path

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scaling  # noqa: E402

CHILD = """
import multiprocessing as mp, time
def hold(mb):
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(1.0)
if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=hold, args=(200,))
    p.start(); p.join()
"""


def test_worker_memory_counts_in_the_tree(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    row = scaling.run_measured([sys.executable, str(script)], tmp_path, dict(os.environ), 0.05, tmp_path / "log")
    assert row["rc"] == 0
    assert row["peak_rss_tree_mb"] >= 200 and row["max_rss_one_mb"] >= 200   # the grandchild's 200 MB
    assert row["peak_rss_stage_mb"] < 150                                    # not the stage process's own
    assert row["processes_max"] >= 2


def test_synthetic_sets_nest(tmp_path):
    scaling.make_dataset(tmp_path / "d", 6, 2, 48, workers=1)
    assert scaling.write_split(tmp_path / "d", 4) == "train_4"
    sets = tmp_path / "d/ImageSets/Segmentation"
    assert (sets / "train_4.txt").read_text().split() == (sets / "train.txt").read_text().split()[:4]
    assert len(list((tmp_path / "d/JPEGImages").glob("*.jpg"))) == 8
    first = (tmp_path / "d/JPEGImages/syn_train_000000.jpg").read_bytes()
    scaling.make_dataset(tmp_path / "e", 3, 1, 48, workers=1)   # image k is the same in any size of set
    assert (tmp_path / "e/JPEGImages/syn_train_000000.jpg").read_bytes() == first


def test_a_stage_past_the_budget_is_killed_whole(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import multiprocessing as mp, time\n"
                      "if __name__ == '__main__':\n"
                      "    p = mp.get_context('spawn').Process(target=time.sleep, args=(60,))\n"
                      "    p.start(); p.join()\n")
    row = scaling.run_measured([sys.executable, str(script)], tmp_path, dict(os.environ), 0.05, tmp_path / "log",
                               kill_after=2.0)
    assert row["killed"] and row["rc"] != 0 and row["wall_seconds"] < 30
