"""Compare backbones, layers, classifiers and fine-tuning in one report, or report a saved bundle on new images.

Writes report.html (self-contained), report.md and report.json with the same numbers."""

import shlex
import sys
from pathlib import Path

from pipeline.commands import cli
from pipeline.errors import UserError
from pipeline.classify import CLASSIFIERS
from pipeline.evaluate import EvaluateConfig, evaluate, evaluate_bundle
from pipeline.extract import DEFAULT_BACKBONE
from pipeline.report import format_summary, write_report

EXAMPLES = """\
  {prog} --data data/tuxpaint --backbones efficientnet_lite0 mobilenet_v2 --out reports/tuxpaint
  {prog} --data data/a data/b --backbones efficientnet_lite0 efficientnet_lite2 \\
      --layers stage6 penultimate --classifiers svm softmax --out reports/ab
  {prog} --data data/fashion_mnist --views flip --out reports/flip   # with and without mirrored views
  {prog} --data data/tuxpaint --finetune --epochs 3 3 --image-size 160 --out reports/ft
  {prog} --bundle runs/tuxpaint/linear/svm.skops --data new_photos/ --out reports/new

Codes are cached in --features (one store per dataset, backbone and layer set): a rerun with one
more backbone extracts only that backbone. Every configuration of a dataset is scored on the same
cross-validation folds, so the report can say which differences are real. --finetune trains one
network per fold of the first repeat, which takes long without a GPU."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="labelled folders (one sub-folder per class) or CSV manifests; with --bundle, one test folder")
    p.add_argument("--out", type=Path, help="report folder (default reports/<data>)")
    p.add_argument("--backbones", nargs="+", default=[DEFAULT_BACKBONE], help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--classifiers", nargs="+", choices=CLASSIFIERS, default=list(CLASSIFIERS),
                   help="default: both")
    p.add_argument("--layers", nargs="+", default=["penultimate"],
                   help="layers to compare, each must exist in every backbone; a+b joins two layers' "
                        "codes side by side (default: penultimate)")
    cli.add_views(p, "each classifier is also scored trained on every view and averaging its predictions over them")
    p.add_argument("--finetune", action="store_true", help="also fine-tune each backbone (one network per fold)")
    p.add_argument("--image-size", type=int, help="fine-tuning resolution (default: the backbone's)")
    p.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("HEAD", "FINETUNE"),
                   help="fine-tuning epochs per phase (default 5 5)")
    p.add_argument("--bundle", type=Path, help="report a saved bundle (fit_svm.py's .skops) on the --data folder")
    p.add_argument("--features", type=Path, default=Path("features"), help="code cache folder (default features/)")
    p.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    p.add_argument("--repeats", type=int, help="repeats of the outer folds (default 3 under 1,000 images, else 1)")
    p.add_argument("--no-advice", action="store_true", help="skip the advisor")
    cli.add_duplicates(p)
    p.add_argument("--seed", type=int, default=0)
    cli.add_engine(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def main(args) -> int:
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    out = args.out or Path("reports") / "_".join(d.resolve().stem for d in args.data)
    if args.bundle:
        if len(args.data) != 1:
            raise UserError("takes one dataset folder", param="bundle")
        report, arrays = evaluate_bundle(args.bundle, args.data[0], args.features, args.seed, not args.no_advice,
                                         command, not args.quiet, engine=args.engine)
    else:
        report, arrays = evaluate(EvaluateConfig(
            data=tuple(args.data), out=out, backbones=tuple(args.backbones), classifiers=tuple(args.classifiers),
            layers=tuple(args.layers), views=tuple(args.views), finetune=args.finetune, image_size=args.image_size,
            epochs=tuple(args.epochs), features=args.features, folds=args.folds, repeats=args.repeats,
            advise=not args.no_advice, seed=args.seed, engine=args.engine, command=command,
            progress=not args.quiet, duplicate_threshold=args.duplicate_threshold))
    paths = write_report(report, arrays, out)
    print(format_summary(report))
    print(f"report: {paths['html']}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
