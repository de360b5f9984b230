"""Place a dataset in one of the four transfer-learning situations and recommend a strategy."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.escalate.config import AdviseConfig
from pipeline.escalate.rule import (
    FAR_DIVERGENCE,
    SIMILAR_DIVERGENCE,
    SMALL_IMAGES,
    SMALL_MEDIAN_CLASS,
)

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
  large + unlike       -> linear classifier on earlier-layer codes (fine-tuning lost in the advisor table)
  large + far          -> fine-tune the whole network
With --budget, a large set gets the linear strategy when fine-tuning's estimated
time on this machine (from the frozen network's measured speed) is over it."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("source", type=Path, help="image folder, CSV manifest, or a feature store (.h5)")
    cli.option(p, AdviseConfig, "backbone", help="backbone to measure with (default: the store's, or the default "
                                                 "backbone)")
    cli.option(p, AdviseConfig, "sample", type=int, help="images used for the similarity (default %(default)s)")
    cli.option(p, AdviseConfig, "seed", type=int, help="fixes the sample (default %(default)s)")
    cli.option(p, AdviseConfig, "weights", type=Path, help="local weights file for the backbone")
    cli.option(p, AdviseConfig, "budget", type=float, metavar="MINUTES", help="time fine-tuning may take here")
    cli.add_engine(p, AdviseConfig)
    cli.option(p, AdviseConfig, "json", type=Path, help="also write the figures and verdict as JSON")
    cli.add_overwrite(p, AdviseConfig, "--json")
    cli.add_allow_outside(p, AdviseConfig)
    return p


def main(args) -> int:
    cfg = cli.settings(AdviseConfig, args)
    from pipeline.escalate.advise import advise, write_advice

    advice = advise(cfg)
    print(advice.format())
    if cfg.json:
        write_advice(advice, cfg.json)
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
