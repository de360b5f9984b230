"""Fit a linear SVM and/or a softmax on cached CNN codes, choosing C by nested cross-validation."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.linear.config import FitConfig, parse_memory
from pipeline.linear.kinds import CLASSIFIERS, classifiers

EXAMPLES = """\
  {prog} features/tuxpaint.h5 --out runs/tuxpaint
  {prog} f.h5 --out runs/x --classifier softmax --class-weight balanced
  {prog} patients.h5 --out runs/x       # a manifest's group column keeps each group in one fold
  {prog} tags.h5 --out runs/x   # several labels per image (a path,labels manifest): one model per label
  {prog} f.h5 --out runs/x --layers stage6 penultimate stage6+penultimate
  {prog} all.h5 --out runs/x --normalise auto   # a store of every stage (extract.py --layers all)
  {prog} f.h5 --out runs/x --classifier blend   # softmax blended with a nearest-neighbour vote
  {prog} flip.h5 --out runs/x --views on   # a store extracted with --views flip: always use the mirrors
  {prog} f.h5 --out runs/x --test-size 0.2            # plus a held-out test split
  {prog} train.h5 --out runs/x --test test.h5         # plus a separate test store
  {prog} huge.h5 --out runs/x --max-memory 2G --test-size 0.05   # streams codes over 2 GiB

Writes RUN_DIR/metrics.json (every figure printed), and RUN_DIR/svm.skops and/or
RUN_DIR/softmax.skops with their .sha256 (svm_ovr.skops and logistic_ovr.skops
for several labels per image, each label with its own threshold); predict with
scripts/predict.py, whose --reject calls an image unknown under the threshold
printed for each model."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("store", type=Path, help="feature store written by scripts/extract.py")
    p.add_argument("--out", type=Path, required=True, help="run folder for metrics.json and the bundles")
    cli.add_overwrite(p, FitConfig)
    p.add_argument("--classifier", choices=[*classifiers(), "both"], default="both",
                   help=f"default: both ({' and '.join(CLASSIFIERS)}); blend: a softmax blended with the vote of "
                        "the nearest training images, k and the blend's weight chosen inside the nested CV")
    cli.option(p, FitConfig, "layers", nargs="+",
               help="layers of the store to compare; a+b joins layers' codes side by side "
                    "(default: every layer it holds, joined)")
    cli.option(p, FitConfig, "normalise",
               help="power: fourth root of the never-negative features, then standard (default for classes); "
                    "standard: zero mean, unit variance per feature (default for a numeric target); "
                    "l2: unit-length rows; blocks: each joined layer power-scaled to weigh alike and the layers "
                    "kept chosen inside each fold (classes only); auto: power and blocks compete")
    cli.option(p, FitConfig, "folds", type=int,
               help="outer folds (default %(default)s; never more than the smallest class)")
    cli.option(p, FitConfig, "repeats", type=int, help="outer repeats (default: 3 under 1,000 images, else 1)")
    cli.option(p, FitConfig, "class_weight",
               help="balanced: weight classes inversely to their size; auto (default): none and balanced "
                    "compete inside the nested CV when the largest class is 1.5x the smallest")
    cli.option(p, FitConfig, "views",
               help="for a store extracted with --views: train on each image's views too and predict on the "
                    "mean over them; auto (default): with and without compete inside the nested CV")
    cli.option(p, FitConfig, "test_size", type=float, help="also hold out this fraction as a stratified test split")
    cli.option(p, FitConfig, "test_store", "--test", type=Path,
               help="also evaluate on this labelled test store (one label per image; for several, --test-size)")
    cli.option(p, FitConfig, "seed", type=int, help="fixes every split (default %(default)s)")
    cli.option(p, FitConfig, "jobs", type=int,
               help="parallel processes for the folds (default: the cores this process may use)")
    cli.option(p, FitConfig, "max_memory", type=parse_memory, metavar="SIZE",
               help="codes larger than this (e.g. 2G, 512M) are streamed through SGD with early stopping "
                    "instead of nested CV (default: a quarter of this machine's memory)")
    cli.option(p, FitConfig, "reject_rate", type=float, metavar="SHARE",
               help="the saved models call an image unknown (predict.py --reject) under the top probability "
                    "that, out of fold, rejects this share of known images (default %(default)s)")
    cli.add_duplicates(p, FitConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args) -> int:
    cfg = cli.settings(FitConfig, args, progress=cli.progress(args),
                       **({} if args.classifier == "both" else {"classifiers": (args.classifier,)}))
    from pipeline.linear.fit import fit

    print(fit(cfg).format())
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
