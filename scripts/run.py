"""Run the whole pipeline on a labelled image folder: advise, extract, fit, pilot, fine-tune if it pays, choose."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.escalate.config import RunConfig

EXAMPLES = """\
  {prog} data/tuxpaint
  {prog} data/fashion_mnist --flip
  {prog} photos/ --finetune always --out runs/photos

With --finetune auto (the default) a small set stays linear; on a large one a
short pilot fine-tune is scored against the linear model on training-split
images kept from both, and the full fine-tune runs only where the pilot finds
it ahead (or inconclusive where the set's situation proposes fine-tuning).
Fine-tuning runs in tail mode on a CPU (the frozen front is computed once per
view and cached; see finetune.py --help) and in full mode on a GPU.
Writes OUT/summary.md and OUT/summary.json (what was chosen and why, with the
figures), OUT/features.h5, OUT/linear/ (fit_svm.py's outputs) and, when it ran,
OUT/finetune/ (finetune.py's). Every candidate is scored on the same held-out images."""


def build_parser(prog: str | None = None):
    R = RunConfig
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", type=Path, help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--out", type=Path, help="run folder (default runs/<data>)")
    cli.add_overwrite(p, R)
    cli.add_allow_outside(p, R)
    cli.option(p, R, "backbone", help="default %(default)s")
    cli.option(p, R, "test_size", type=float, help="held-out fraction for the comparison (default %(default)s)")
    cli.option(p, R, "finetune", help="auto: where the pilot decides for it (default); always; never")
    cli.option(p, R, "budget", type=float, metavar="MINUTES",
               help="auto fine-tunes only when the full run's time here, as the pilot measured it, fits")
    cli.option(p, R, "mode", help="fine-tuning mode: tail, full, or auto (full on a GPU, tail on a CPU; default)")
    cli.add_image_size(p, R)
    cli.option(p, R, "flip", action="store_true",
               help="mirror images too in fine-tuning (leave off where a mirror changes the class)")
    cli.option(p, R, "tail_epochs", type=int, help="tail mode: most epochs (default %(default)s)")
    cli.option(p, R, "epochs", type=int, nargs=2, metavar=("HEAD", "FINETUNE"),
               help="full mode: epochs of its two phases (default %(default)s)")
    cli.option(p, R, "seed", type=int, help="fixes the split and every draw (default %(default)s)")
    cli.add_engine(p, R)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def main(args) -> int:
    out = args.out or Path("runs") / args.data.resolve().name
    cfg = cli.settings(RunConfig, args, out=out, progress=cli.progress(args))
    from pipeline.escalate.run import format_summary, run

    result = run(cfg)
    print(result.fit.format() + "\n")
    print(format_summary(result))
    print(f"\nwrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
