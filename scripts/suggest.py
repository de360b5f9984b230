"""Rank unlabelled images by how much their labels would help a bundle: uncertain ones, spread out, none a
near-duplicate of an image it was fitted on."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.deploy.config import SuggestConfig

EXAMPLES = """\
  {prog} runs/tuxpaint/softmax.skops unlabelled/
  {prog} runs/tuxpaint/svm.skops 'inbox/**/*.jpg' --count 50 --out to_label.csv
  {prog} runs/tuxpaint/softmax.skops features/inbox.h5    # a store from extract.py --unlabelled
  {prog} model.skops unlabelled/ --labelled features/tuxpaint.h5   # a bundle moved from its run folder

Label the images at the top of the CSV first, add them to the training folders
and fit again. How it ranks: the 10 x COUNT images with the smallest margin
between their two top classes, clustered into COUNT groups by k-means, the
image nearest each centre (Zhdanov 2019, diverse mini-batch active learning);
images as similar to a labelled one as near-duplicates are left out."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("model", type=Path, help="a .skops bundle (fit_svm.py or run.py)")
    p.add_argument("images", nargs="+", help="unlabelled image files, folders (recursive), glob patterns, or one "
                                             "feature store (.h5) extracted with the bundle's backbone")
    cli.option(p, SuggestConfig, "count", type=int, help="images to suggest (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("suggestions.csv"),
                   help="the ranked CSV (default %(default)s)")
    cli.add_overwrite(p, SuggestConfig)
    cli.option(p, SuggestConfig, "labelled", type=Path, metavar="STORE",
               help="the feature store the bundle was fitted on (default: the one its run's metrics.json names)")
    cli.option(p, SuggestConfig, "seed", type=int, help="fixes the clustering (default %(default)s)")
    cli.option(p, SuggestConfig, "weights", type=Path,
               help="the local backbone weights the bundle was extracted with")
    cli.option(p, SuggestConfig, "batch_size", type=int, help="images per forward pass (default %(default)s)")
    cli.add_engine(p, SuggestConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(args) -> int:
    cfg = cli.settings(SuggestConfig, args, progress=cli.progress(args))
    from pipeline.deploy.suggest import suggest, write_csv

    suggestions = suggest(cfg)
    print(suggestions.format())
    write_csv(suggestions, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
