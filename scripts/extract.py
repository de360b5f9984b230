"""Extract CNN codes of a folder of images with a frozen ImageNet backbone into an HDF5 store."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.backbones.spec import safe_name
from pipeline.errors import UserError
from pipeline.store.config import ExtractConfig

EXAMPLES = """\
  {prog} data/tuxpaint --out features/tuxpaint.h5
  {prog} photos/ --backbone mobilenet_v2 --layers stage4 penultimate --out f.h5
  {prog} photos/ --layers all --out f.h5       # every stage: fit_svm.py --normalise auto weighs them
  {prog} labels.csv --out f.h5          # CSV manifest with columns path,label
  {prog} data/tuxpaint --views flip --out f.h5   # mirror images too: fit trains on both, predicts on the mean
  {prog} data/ --backbone keras_resnet50 --weights resnet50.weights.h5 --out f.h5
  {prog} photos/ --backbone dinov2_small --out f.h5    # keras-hub preset, downloaded once
  {prog} photos/ --backbone dinov2_small --weights dinov2_small/ --out f.h5   # a local copy of the preset
  {prog} photos/ --backbone my_net.keras --out f.h5    # your own network, described by my_net.json
  {prog} data/tuxpaint --engine keras --out f.h5   # Keras even on a CPU (auto: ONNX Runtime)
  {prog} archive/ --unlabelled --ray auto --out /shared/archive.h5   # on a Ray cluster
  {prog} --list-backbones

Rerunning the same command resumes an interrupted run and, on a changed folder,
extracts only new and changed images; removed images leave the store."""


def list_backbones() -> None:
    from pipeline.backbones.codes import layer_widths
    from pipeline.backbones.loading import download_size
    from pipeline.backbones.registry import available, get_spec

    def size(widths: list[int]) -> str:
        return f"{sum(widths):,} values, {sum(widths) * 4 / 1024:.1f} KB per image"

    for name in available():
        spec = get_spec(name)
        widths = layer_widths(spec)
        where = "offline" if spec.offline else f"download {download_size(spec)}"
        print(f"{name:24} {spec.input_size}px, {where}\n"
              f"{'':24} layers: {', '.join(spec.feature_layers)}\n"
              f"{'':24} default {' '.join(spec.default_layers)}: "
              f"{size([widths[x] for x in spec.default_layers])}; all: {size(list(widths.values()))}\n"
              f"{'':24} {spec.description}")


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", nargs="?", type=Path,
                   help="folder with one sub-folder per class, an unlabelled folder, or a CSV manifest")
    p.add_argument("--out", type=Path, help="HDF5 store to write (default: features/<data>_<backbone>[_<view>].h5)")
    cli.add_overwrite(p, ExtractConfig)
    cli.add_allow_outside(p, ExtractConfig)
    cli.option(p, ExtractConfig, "backbone",
               help="registered backbone (default %(default)s; --list-backbones), or the path of a network of your "
                    "own: a .keras or .onnx file, a SavedModel or a keras-hub preset folder, with a JSON card beside "
                    "it (docs/extract.md)")
    cli.option(p, ExtractConfig, "layers", nargs="+",
               help="layers to extract, each globally pooled; all: every stage from the stem to the penultimate "
                    "layer (default: the backbone's, --list-backbones; stage5 stage6 penultimate for Lite0, which "
                    "fit_svm.py joins)")
    cli.add_views(p, ExtractConfig, "fit_svm.py then compares training on every view and averaging the predictions "
                                    "over them")
    cli.option(p, ExtractConfig, "weights", type=Path,
               help="local weights file instead of the default ImageNet weights")
    cli.option(p, ExtractConfig, "batch_size", type=int, help="images per forward pass (default %(default)s)")
    cli.option(p, ExtractConfig, "workers", type=int, help="decoding threads (default: number of CPUs)")
    cli.option(p, ExtractConfig, "precision", help="auto: mixed float16 on a GPU, float32 on the CPU (default)")
    cli.add_engine(p, ExtractConfig)
    cli.add_ray(p)
    cli.option(p, ExtractConfig, "resize",
               help="crop: aspect-preserving resize + centre crop (default); pad; stretch")
    cli.option(p, ExtractConfig, "unlabelled", action="store_true",
               help="treat sub-folders as plain folders, not classes")
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
    out = args.out or Path("features") / f"{args.data.resolve().stem}_{safe_name(args.backbone)}{views}.h5"
    cfg = cli.settings(ExtractConfig, args, out=out, progress=cli.progress(args))
    from pipeline.store.extract import extract

    if args.ray:
        from pipeline.scaleout.extract import OnCluster

        result = extract(cfg, OnCluster(args.ray))
    else:
        result = extract(cfg)
    print(result.summary())
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
