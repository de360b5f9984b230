"""Fit a linear SVM and/or a softmax on cached CNN codes, choosing C by nested cross-validation."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.classify import CLASS_WEIGHTS, CLASSIFIERS, VIEW_SETTINGS
from pipeline.scaling import NORMALISATIONS
from pipeline.fit import FitConfig, fit
from pipeline.reject import DEFAULT_RATE
from pipeline.stream_fit import parse_memory

EXAMPLES = """\
  {prog} features/tuxpaint.h5 --out runs/tuxpaint
  {prog} f.h5 --out runs/x --classifier softmax --class-weight balanced
  {prog} patients.h5 --out runs/x       # a manifest's group column keeps each group in one fold
  {prog} f.h5 --out runs/x --layers stage6 penultimate stage6+penultimate
  {prog} flip.h5 --out runs/x --views on   # a store extracted with --views flip: always use the mirrors
  {prog} f.h5 --out runs/x --test-size 0.2            # plus a held-out test split
  {prog} train.h5 --out runs/x --test test.h5         # plus a separate test store
  {prog} huge.h5 --out runs/x --max-memory 2G --test-size 0.05   # streams codes over 2 GiB

Writes RUN_DIR/metrics.json (every figure printed), and RUN_DIR/svm.skops and/or
RUN_DIR/softmax.skops with their .sha256; predict with scripts/predict.py."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("store", type=Path, help="feature store written by scripts/extract.py")
    p.add_argument("--out", type=Path, required=True, help="run folder for metrics.json and the bundles")
    p.add_argument("--classifier", choices=[*CLASSIFIERS, "both"], default="both", help="default: both")
    p.add_argument("--layers", nargs="+",
                   help="layers of the store to compare; a+b joins layers' codes side by side "
                        "(default: every layer it holds, joined)")
    p.add_argument("--normalise", choices=NORMALISATIONS,
                   help="power: fourth root of the never-negative features, then standard (default for classes); "
                        "standard: zero mean, unit variance per feature (default for a numeric target); "
                        "l2: unit-length rows")
    p.add_argument("--folds", type=int, default=5, help="outer folds (default 5; never more than the smallest class)")
    p.add_argument("--repeats", type=int, help="outer repeats (default: 3 under 1,000 images, else 1)")
    p.add_argument("--class-weight", choices=CLASS_WEIGHTS, default="auto",
                   help="balanced: weight classes inversely to their size; auto (default): none and balanced "
                        "compete inside the nested CV when the largest class is 1.5x the smallest")
    p.add_argument("--views", choices=VIEW_SETTINGS, default="auto",
                   help="for a store extracted with --views: train on each image's views too and predict on the "
                        "mean over them; auto (default): with and without compete inside the nested CV")
    p.add_argument("--test-size", type=float, help="also hold out this fraction as a stratified test split")
    p.add_argument("--test", dest="test_store", type=Path, help="also evaluate on this labelled test store")
    p.add_argument("--seed", type=int, default=0, help="fixes every split (default 0)")
    p.add_argument("--jobs", type=int, help="parallel processes for the folds (default: number of CPUs)")
    p.add_argument("--max-memory", type=parse_memory, metavar="SIZE",
                   help="codes larger than this (e.g. 2G, 512M) are streamed through SGD with early stopping "
                        "instead of nested CV (default: a quarter of this machine's memory)")
    p.add_argument("--reject-rate", type=float, default=DEFAULT_RATE, metavar="SHARE",
                   help="the saved models call an image unknown (predict.py --reject) under the top probability "
                        "that, out of fold, rejects this share of known images (default 0.05)")
    cli.add_duplicates(p)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args) -> int:
    metrics = fit(FitConfig(
        store=args.store, out=args.out,
        classifiers=CLASSIFIERS if args.classifier == "both" else (args.classifier,),
        layers=tuple(args.layers) if args.layers else None, normalise=args.normalise, folds=args.folds,
        repeats=args.repeats, class_weight=args.class_weight, views=args.views,
        test_size=args.test_size,
        test_store=args.test_store, seed=args.seed, jobs=args.jobs, max_memory=args.max_memory,
        reject_rate=args.reject_rate, duplicate_threshold=args.duplicate_threshold,
    ))
    print(metrics.format())
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
