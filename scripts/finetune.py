"""Fine-tune an ImageNet backbone on a labelled image folder: a new softmax head, then the later blocks."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.device import PRECISIONS
from pipeline.extract import DEFAULT_BACKBONE
from pipeline.backbones.engine import ENGINES
from pipeline.finetune import MODES, OPTIMIZERS, FinetuneConfig, finetune

EXAMPLES = """\
  {prog} data/fashion_mnist --out runs/fashion --flip
  {prog} data/mnist --out runs/mnist --views 6 --cut stage4
  {prog} data/tuxpaint --out runs/tuxpaint_full --mode full --image-size 128
  python scripts/predict.py runs/fashion/model.keras photo.png

Tail mode (the default on a CPU): the frozen front of the network runs once
over --views shifted views of each training image (mirrored too with --flip;
leave it off where a mirror changes the class, as for digits), and its output
at --cut is cached in OUT/activations (HDF5, float16, reused by later runs).
The blocks after the cut and the head then train from the cache: the head
starts as the linear probe on the training split's codes, the blocks learn
--block-lr-factor times slower, BatchNorm stays frozen, early stopping on the
validation split ends training (at most --tail-epochs epochs), and the weights
averaged over the epochs from the third on are mixed with the start's in the
share that scores best on the validation split.

Full mode (the default on a GPU): the whole network runs on augmented pixels
(small rotations, shifts and zooms; mirrors too with --flip) every epoch;
phase 1 trains the head, phase 2 unfreezes the last --unfreeze weighted layers
at a learning rate ten times smaller.

Rerunning the same command after an interruption resumes. Writes model.keras,
classes.json, history.json, curves.png and metrics.json (the same form as
fit_svm.py's, so the two compare directly)."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", type=Path, help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="tail, full, or auto: full where a GPU is seen, tail on a CPU (default auto)")
    cli.add_image_size(p)
    p.add_argument("--top", default="penultimate", metavar="LAYER",
                   help="the feature layer the new head sits on (default penultimate; an earlier one drops the "
                        "blocks after it)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the head (default 0.2)")
    p.add_argument("--flip", action="store_true", help="mirror images left to right too (tail: every other view; "
                                                       "full: half the time); leave off where a mirror changes "
                                                       "the class")
    tail = p.add_argument_group("tail mode")
    tail.add_argument("--cut", metavar="LAYER", help="the feature layer whose activations are cached; the blocks "
                                                     "after it train (default: stage5 for EfficientNet-Lite)")
    tail.add_argument("--views", type=int, default=4, help="views per training image, the image itself "
                                                            "included (default 4)")
    tail.add_argument("--tail-epochs", type=int, default=15, help="most epochs; early stopping decides "
                                                                   "(default 15)")
    tail.add_argument("--block-lr-factor", type=float, default=0.3,
                      help="the blocks' learning rate as a fraction of the head's (default 0.3)")
    tail.add_argument("--engine", choices=ENGINES, default="auto", help="what runs the frozen front "
                                                                         "(default: ONNX Runtime on a CPU)")
    full = p.add_argument_group("full mode")
    full.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("HEAD", "FINETUNE"),
                      help="epochs of phase 1 and phase 2 (default 5 5)")
    full.add_argument("--unfreeze", type=int, default=30, help="weighted layers unfrozen in phase 2 (default 30)")
    full.add_argument("--unfreeze-from", metavar="LAYER",
                      help="instead, unfreeze everything from this layer on (e.g. stage5 for the offline backbones)")
    full.add_argument("--no-augment", action="store_true", help="no rotations, shifts, zooms or flips")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="the head's; full mode's phase 2 uses a tenth (default 1e-3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="adam, or sgd with momentum 0.9")
    p.add_argument("--hidden", type=int, help="add a hidden dense layer of this width before the softmax")
    p.add_argument("--no-probe", action="store_true", help="start the head from random weights")
    p.add_argument("--val-size", type=float, default=0.2, help="stratified validation fraction (default 0.2)")
    p.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs (default 4)")
    p.add_argument("--class-weight", choices=["balanced", "none"], default="balanced")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines, warnings only")
    return p


def main(args) -> int:
    result = finetune(FinetuneConfig(
        data=args.data, out=args.out, backbone=args.backbone, mode=args.mode, image_size=args.image_size,
        cut=args.cut, top=args.top, dropout=args.dropout, views=args.views, flip=args.flip,
        tail_epochs=args.tail_epochs,
        block_lr_factor=args.block_lr_factor, engine=args.engine, head_epochs=args.epochs[0],
        finetune_epochs=args.epochs[1], unfreeze=args.unfreeze, unfreeze_from=args.unfreeze_from,
        learning_rate=args.learning_rate, optimizer=args.optimizer, hidden=args.hidden,
        augment=not args.no_augment, val_size=args.val_size, patience=args.patience,
        class_weight=None if args.class_weight == "none" else "balanced", probe=not args.no_probe,
        batch_size=args.batch_size, seed=args.seed, precision=args.precision, progress=not args.quiet,
    ))
    v, images = result.validation, result.validation_images
    if result.task == "regression":
        print(f"validation R2 {v.scores['r2'].mean:.3f}, MAE {v.scores['mae'].mean:.4g} on {images} images; "
              f"training took {v.fit_seconds:.0f} s")
    else:
        acc = v.scores["accuracy"]
        print(f"validation accuracy {acc.mean:.3f} [{acc.ci95[0]:.3f}, {acc.ci95[1]:.3f}] on "
              f"{images} images; training took {v.fit_seconds:.0f} s")
    print(f"saved {args.out / 'model.keras'}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
