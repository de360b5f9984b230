"""Extract CNN codes of a folder of images with a frozen ImageNet backbone into an HDF5 store."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.errors import UserError
from pipeline.backbones.registry import available, get_spec
from pipeline.device import PRECISIONS
from pipeline.extract import DEFAULT_BACKBONE, ExtractConfig, extract
from pipeline.images import RESIZE_MODES

EXAMPLES = """\
  {prog} data/tuxpaint --out features/tuxpaint.h5
  {prog} photos/ --backbone mobilenet_v2 --layers stage4 penultimate --out f.h5
  {prog} labels.csv --out f.h5          # CSV manifest with columns path,label
  {prog} data/tuxpaint --views flip --out f.h5   # mirror images too: fit trains on both, predicts on the mean
  {prog} data/ --backbone keras_resnet50 --weights resnet50.weights.h5 --out f.h5
  {prog} data/tuxpaint --engine keras --out f.h5   # Keras even on a CPU (auto: ONNX Runtime)
  {prog} archive/ --unlabelled --ray auto --out /shared/archive.h5   # on a Ray cluster
  {prog} --list-backbones

Rerunning the same command resumes an interrupted run and, on a changed folder,
extracts only new and changed images; removed images leave the store."""


def list_backbones() -> None:
    for name in available():
        spec = get_spec(name)
        where = "offline" if spec.offline else "download"
        print(f"{name:24} {where:8} {spec.input_size:4d}px  layers: {', '.join(spec.feature_layers)} "
              f"(default: {' '.join(spec.default_layers)})\n"
              f"{'':24} {spec.description}")


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", nargs="?", type=Path,
                   help="folder with one sub-folder per class, an unlabelled folder, or a CSV manifest")
    p.add_argument("--out", type=Path, help="HDF5 store to write (default: features/<data>_<backbone>[_<view>].h5)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registered backbone (default {DEFAULT_BACKBONE})")
    p.add_argument("--layers", nargs="+",
                   help="layers to extract, each globally pooled (default: the backbone's, --list-backbones; "
                        "stage5 stage6 penultimate for the offline ones, which fit_svm.py joins)")
    cli.add_views(p, "fit_svm.py then compares training on every view and averaging the predictions over them")
    p.add_argument("--weights", type=Path, help="local weights file instead of the default ImageNet weights")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, help="decoding threads (default: number of CPUs)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: mixed float16 on a GPU, float32 on the CPU (default)")
    cli.add_engine(p)
    cli.add_ray(p)
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                   help="crop: aspect-preserving resize + centre crop (default); pad; stretch")
    p.add_argument("--unlabelled", action="store_true", help="treat sub-folders as plain folders, not classes")
    p.add_argument("--list-backbones", action="store_true", help="list the registered backbones and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args) -> int:
    if args.list_backbones:
        list_backbones()
        return 0
    if args.data is None:
        raise UserError("required (or --list-backbones)", param="data")
    views = "".join(f"_{v}" for v in args.views)
    out = args.out or Path("features") / f"{args.data.resolve().stem}_{args.backbone}{views}.h5"
    result = extract(ExtractConfig(
        data=args.data, out=out, backbone=args.backbone, layers=tuple(args.layers or ()), views=tuple(args.views),
        weights=args.weights,
        batch_size=args.batch_size, workers=args.workers, precision=args.precision, engine=args.engine,
        resize=args.resize, unlabelled=args.unlabelled, ray=args.ray, progress=not args.quiet,
    ))
    print(result.summary())
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
