"""Fault injection: the record of what the tests guard.

Each FAULT removes one method's core term by a small source patch in a temporary copy of the
repository (the working tree is never touched), runs the tests named for it there, and counts it
caught when some of them fail. Every test set also runs once unpatched first, so a fault is not
"caught" by a test that fails anyway. From the repository root:

    OMP_NUM_THREADS=1 python tests/fault_injection.py [--only SUBSTRING] [--no-baseline]

It prints a table (fault, patched file, tests run, verdict, the tests that failed) and exits 1 when
a fault goes uncaught, a patch no longer applies (the code moved: update its `old` text) or a
baseline fails. Not a pytest test (pytest collects test_*.py only), so it cannot run itself.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Fault:
    name: str
    path: str          # the file patched, relative to the repository root
    old: str           # must occur exactly once in it
    new: str
    tests: tuple       # pytest arguments: files, node ids, -k expressions


CRF_TESTS = ("tests/test_labels_and_crf.py", "tests/test_superpixels.py", "tests/test_rounds.py")
COTRAINING = "wsss/semi/cotraining.py"
CYCLE = "wsss/semi/cycle.py"

FAULTS = [
    Fault("dense CRF skipped in pseudo labels", "wsss/labelling/pseudo.py",
          'refined = dense_crf(image, probs, cfg["crf"]).argmax(0)', "refined = probs.argmax(0)", CRF_TESTS),
    Fault("superpixel vote skipped in pseudo labels", "wsss/labelling/pseudo.py",
          "labels = superpixels.vote(labels, superpixels.regions(image, sp), sp)",
          "superpixels.regions(image, sp)", CRF_TESTS),
    Fault("co-training agreement term dropped from the loss", COTRAINING,
          'loss = sup + ramp * co["agreement_weight"] * agree', "loss = sup", ("tests/test_semi_cotraining.py",)),
    Fault("co-training diversity term dropped from the loss", COTRAINING,
          'loss = loss + ramp * co["diversity_weight"] * differ', "loss = loss", ("tests/test_semi_cotraining.py",)),
    Fault("OCR object context zeroed", "models/ocr.py",
          "context = self.context(pixels, region_representations(pixels, aux))", "context = torch.zeros_like(pixels)",
          ("tests/test_segmenter_methods.py", "-k", "ocr or relation or region")),
    Fault("CycleGAN image cycle dropped from the loss", CYCLE,
          '+ w["cycle_image_weight"] * terms["cycle_image"]', "", ("tests/test_semi_cycle.py",)),
    Fault("CycleGAN mask cycle dropped from the loss", CYCLE,
          '+ w["cycle_mask_weight"] * terms["cycle_mask"])', ")", ("tests/test_semi_cycle.py",)),
    Fault("dual-branch heads trained by one shared loss", "wsss/semi/stage.py",
          'batch_loss = dual.batch_loss_fn(cfg, n_masked, semi["pseudo_weight"], parts)',
          'shared = supervised_batch_loss(cfg, n_masked, semi["pseudo_weight"], parts)\n'
          "        batch_loss = lambda m, b: shared(m.segmenter, b)",
          ("tests/test_semi_dual.py", "tests/test_semi.py", "-k", "dual")),
    Fault("Dask dashboard listening on every interface", "wsss/scaleout/engine.py",
          'dashboard_address=f"{LOOPBACK}:0"', 'dashboard_address=":0"', ("tests/test_listeners.py", "-k", "dask")),
    Fault("random walk skipped in propagation", "wsss/localization/affinity.py",
          "walked = random_walk(transition_matrix(affinities, pairs, (h, w), beta), scores, steps)",
          "walked = scores", ("tests/test_affinity.py",)),
]


def copy_repo(dest: Path) -> Path:
    """The working tree's tracked and untracked, not ignored files (uncommitted edits included)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def pytest(repo: Path, tests: tuple) -> tuple[int, list[str], float]:
    """(exit code, failed or erroring test ids, seconds) of the tests in `repo`."""
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests], cwd=repo,
                         capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
    return run.returncode, failed, time.monotonic() - start


def inject(repo: Path, fault: Fault) -> str | None:
    """Applies the patch; the original text to put back, or None when `old` is not there exactly once."""
    path = repo / fault.path
    text = path.read_text()
    if text.count(fault.old) != 1:
        return None
    path.write_text(text.replace(fault.old, fault.new))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="only the faults whose name contains this")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched runs")
    args = parser.parse_args()
    faults = [f for f in FAULTS if args.only in f.name]
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        repo = copy_repo(Path(tmp))
        if not args.no_baseline:
            for tests in dict.fromkeys(f.tests for f in faults):
                code, failed, seconds = pytest(repo, tests)
                print(f"baseline {' '.join(tests)}: exit {code}, {seconds:.0f} s", *failed, sep="\n  ", flush=True)
                ok &= code == 0
        for fault in faults:
            original = inject(repo, fault)
            if original is None:
                rows.append((fault, "PATCH DOES NOT APPLY", []))
                ok = False
                continue
            try:
                code, failed, seconds = pytest(repo, fault.tests)
            finally:
                (repo / fault.path).write_text(original)
            verdict = (f"caught ({len(failed)} failed)" if code == 1 and failed else
                       "NOT CAUGHT" if code == 0 else f"error (pytest exit {code})")
            ok &= verdict.startswith("caught")
            rows.append((fault, f"{verdict}, {seconds:.0f} s", failed))
            print(f"{fault.name}: {verdict}", flush=True)
    print(table(rows))
    return 0 if ok else 1


def table(rows) -> str:
    head = ("fault", "patched file", "tests run", "verdict")
    cells = [(f.name, f.path, " ".join(f.tests), verdict) for f, verdict, _ in rows]
    widths = [max(len(r[k]) for r in [head, *cells]) for k in range(4)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), line]
    for cell, (_, _, failed) in zip(cells, rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip())
        out += [f"    fails: {test}" for test in failed]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
