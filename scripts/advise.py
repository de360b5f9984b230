"""Place a dataset in one of the four transfer-learning situations and recommend a strategy."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.advise import FAR_DIVERGENCE, SIMILAR_DIVERGENCE, SMALL_IMAGES, SMALL_MEDIAN_CLASS, advise, write_advice

EXAMPLES = """\
  {prog} data/tuxpaint
  {prog} features/tuxpaint_efficientnet_lite0.h5      # the images behind a store
  {prog} data/fashion_mnist --sample 300 --json advice.json
  {prog} data/mnist --budget 5            # linear unless fine-tuning fits in 5 minutes

""" + f"""\
small:   under {SMALL_IMAGES:,} images or a median class under {SMALL_MEDIAN_CLASS} images
similar: BatchNorm divergence from ImageNet statistics under {SIMILAR_DIVERGENCE}; far: {FAR_DIVERGENCE} and over
  small + similar      -> linear classifier on penultimate codes
  small + unlike/far   -> linear classifier on earlier-layer codes
  large + similar      -> fine-tune the later layers
  large + unlike       -> linear classifier on earlier-layer codes (fine-tuning lost in the README's table)
  large + far          -> fine-tune the whole network
With --budget, a large set gets the linear strategy when fine-tuning's estimated
time on this machine (from the frozen network's measured speed) is over it."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("source", type=Path, help="image folder, CSV manifest, or a feature store (.h5)")
    p.add_argument("--backbone", help="backbone to measure with (default: the store's, or efficientnet_lite0)")
    p.add_argument("--sample", type=int, default=200, help="images used for the similarity (default 200)")
    p.add_argument("--seed", type=int, default=0, help="fixes the sample (default 0)")
    p.add_argument("--weights", type=Path, help="local weights file for the backbone")
    p.add_argument("--budget", type=float, metavar="MINUTES", help="time fine-tuning may take here")
    cli.add_engine(p)
    p.add_argument("--json", type=Path, help="also write the figures and verdict as JSON")
    return p


def main(args) -> int:
    advice = advise(args.source, args.backbone, args.sample, args.seed, args.weights, args.engine, args.budget)
    print(advice.format())
    if args.json:
        write_advice(advice, args.json)
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
