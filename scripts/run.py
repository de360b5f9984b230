"""Run the whole pipeline on a labelled image folder: advise, extract, fit, fine-tune if advised, choose."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.end_to_end import FINETUNE_CHOICES, RunConfig, format_summary, run
from pipeline.extract import DEFAULT_BACKBONE
from pipeline.finetune import MODES

EXAMPLES = """\
  {prog} data/tuxpaint
  {prog} data/fashion_mnist --flip
  {prog} photos/ --finetune always --out runs/photos

Fine-tuning runs in tail mode on a CPU (the frozen front is computed once per
view and cached; see finetune.py --help) and in full mode on a GPU.
Writes OUT/summary.md and OUT/summary.json (what was chosen and why, with the
figures), OUT/features.h5, OUT/linear/ (fit_svm.py's outputs) and, when it ran,
OUT/finetune/ (finetune.py's). Every candidate is scored on the same held-out images."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", type=Path, help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--out", type=Path, help="run folder (default runs/<data>)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out fraction for the comparison (default 0.2)")
    p.add_argument("--finetune", choices=FINETUNE_CHOICES, default="auto",
                   help="auto: only where the advisor recommends it (default)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="auto fine-tunes only when its estimated time here fits (advise.py --help)")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="fine-tuning mode: tail, full, or auto (full on a GPU, tail on a CPU; default)")
    cli.add_image_size(p)
    p.add_argument("--flip", action="store_true",
                   help="mirror images too in fine-tuning (leave off where a mirror changes the class)")
    p.add_argument("--tail-epochs", type=int, default=15, help="tail mode: most epochs (default 15)")
    p.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("HEAD", "FINETUNE"),
                   help="full mode: epochs of its two phases (default 5 5)")
    p.add_argument("--seed", type=int, default=0)
    cli.add_engine(p)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(args) -> int:
    out = args.out or Path("runs") / args.data.resolve().name
    result = run(RunConfig(data=args.data, out=out, backbone=args.backbone, test_size=args.test_size,
                            finetune=args.finetune, budget=args.budget, mode=args.mode,
                            image_size=args.image_size, flip=args.flip, tail_epochs=args.tail_epochs,
                            epochs=tuple(args.epochs),
                            seed=args.seed, engine=args.engine, progress=not args.quiet))
    print(result.fit.format() + "\n")
    print(format_summary(result.to_json()))
    print(f"\nwrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
