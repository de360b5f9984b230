"""Compare backbones, layers, classifiers and fine-tuning in one report, or report a saved bundle on new images.

Writes report.html (self-contained), report.md and report.json with the same numbers."""

import shlex
import sys
from pathlib import Path

from pipeline.commands import cli

from pipeline.errors import UserError
from pipeline.report.config import BundleReportConfig, EvaluateConfig

EXAMPLES = """\
  {prog} --data data/tuxpaint --backbones efficientnet_lite0 mobilenet_v2 --out reports/tuxpaint
  {prog} --data data/a data/b --backbones efficientnet_lite0 efficientnet_lite2 \\
      --layers stage6 penultimate --classifiers svm softmax --out reports/ab
  {prog} --data data/fashion_mnist --views flip --out reports/flip   # with and without mirrored views
  {prog} --data data/tuxpaint --finetune --epochs 3 3 --image-size 160 --out reports/ft
  {prog} --bundle runs/tuxpaint/linear/svm.skops --data new_photos/ --out reports/new
  {prog} --data data/tuxpaint --heatmaps 12 --out reports/tuxpaint   # more images explained

Codes are cached in --features (one store per dataset, backbone and layer set): a rerun with one
more backbone extracts only that backbone. Every configuration of a dataset is scored on the same
cross-validation folds, so the report can say which differences are real. --finetune trains one
network per fold of the first repeat, which takes long without a GPU."""


def build_parser(prog: str | None = None):
    E = EvaluateConfig
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="labelled folders (one sub-folder per class) or CSV manifests; with --bundle, one test folder")
    p.add_argument("--out", type=Path, help="report folder (default reports/<data>)")
    cli.add_overwrite(p, E)
    cli.add_allow_outside(p, E)
    cli.option(p, E, "backbones", nargs="+", help="default %(default)s")
    cli.option(p, E, "classifiers", nargs="+", help="default: all")
    cli.option(p, E, "layers", nargs="+",
               help="layers to compare, each must exist in every backbone; a+b joins two layers' "
                    "codes side by side (default: each backbone's default layers joined, as extract stores "
                    "them and fit_svm.py fits them)")
    cli.add_views(p, E, "each classifier is also scored trained on every view and averaging its predictions over "
                        "them")
    cli.option(p, E, "finetune", action="store_true", help="also fine-tune each backbone (one network per fold)")
    cli.option(p, E, "image_size", type=int, help="fine-tuning resolution (default: the backbone's)")
    cli.option(p, E, "epochs", type=int, nargs=2, metavar=("HEAD", "FINETUNE"),
               help="fine-tuning epochs per phase (default %(default)s)")
    p.add_argument("--bundle", type=Path, help="report a saved bundle (fit_svm.py's .skops) on the --data folder")
    cli.option(p, E, "features", type=Path, help="code cache folder (default %(default)s)")
    cli.option(p, E, "folds", type=int, help="outer cross-validation folds (default %(default)s)")
    cli.option(p, E, "repeats", type=int, help="repeats of the outer folds (default 3 under 1,000 images, else 1)")
    cli.option(p, E, "advise", "--no-advice", action="store_false", help="skip the advisor")
    cli.option(p, E, "heatmaps", type=int, metavar="N",
               help="draw where the model looked on its N most confident mistakes and N images it got right "
                    "(default %(default)s; 0: none; the best linear configuration or the bundle)")
    cli.add_duplicates(p, E)
    cli.option(p, E, "seed", type=int, help="fixes every split (default %(default)s)")
    cli.add_engine(p, E)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def main(args) -> int:
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    out = args.out or Path("reports") / "_".join(d.resolve().stem for d in args.data)
    if args.bundle:
        if len(args.data) != 1:
            raise UserError("takes one dataset folder", param="bundle")
        cfg = cli.settings(BundleReportConfig, args, data=args.data[0], out=out, command=command,
                           progress=cli.progress(args))
        from pipeline.report.bundle_report import evaluate_bundle

        report = evaluate_bundle(cfg)
    else:
        cfg = cli.settings(EvaluateConfig, args, out=out, command=command, progress=cli.progress(args))
        from pipeline.report.grid import evaluate

        report = evaluate(cfg)
    from pipeline.report.render import format_summary, write_report

    paths = write_report(report, out)
    print(format_summary(report))
    print(f"report: {paths['html']}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
