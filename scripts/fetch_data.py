"""Fetch real image sets from the package registries into data/ (Tux Paint stamps, foolbox ImageNet photos)."""

from pipeline import cli
from pipeline.datasets import FETCHERS

EXAMPLES = """\
  python scripts/fetch_data.py tuxpaint          # 7 classes, 220 photos (Debian package, GPL-2)
  python scripts/fetch_data.py foolbox           # 20 ImageNet validation photos (PyPI, MIT)"""


def main() -> int:
    p = cli.parser(__doc__, EXAMPLES)
    p.add_argument("names", nargs="+", choices=sorted(FETCHERS), help="data sets to fetch")
    args = p.parse_args()
    for name in args.names:
        print(FETCHERS[name]())
    return 0


if __name__ == "__main__":
    cli.run(main)
