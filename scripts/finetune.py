"""Fine-tune an ImageNet backbone on a labelled image folder: new softmax head first, then the later layers."""

from pathlib import Path

from pipeline.commands import cli
from pipeline.device import PRECISIONS
from pipeline.extract import DEFAULT_BACKBONE
from pipeline.finetune import OPTIMIZERS, FinetuneConfig, finetune

EXAMPLES = """\
  {prog} data/tuxpaint --out runs/tuxpaint_finetuned --image-size 128
  {prog} data/fashion_mnist --out runs/fashion --unfreeze 60 --optimizer sgd
  python scripts/predict.py runs/tuxpaint_finetuned/model.keras photo.jpg

Phase 1 trains the head (started from a linear probe on the training split's
codes) with the base frozen; phase 2 unfreezes the last --unfreeze weighted
layers at a learning rate ten times smaller. BatchNorm stays frozen and in
inference mode. Rerunning the same command after an interruption resumes.
Writes model.keras, classes.json, history.json, curves.png and metrics.json
(the same form as fit_svm.py's, so the two compare directly)."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", type=Path, help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}")
    p.add_argument("--image-size", type=int, help="train at this resolution (default: the backbone's; "
                                                  "smaller is much faster on a CPU)")
    p.add_argument("--epochs", type=int, nargs=2, default=[5, 5], metavar=("HEAD", "FINETUNE"),
                   help="epochs of phase 1 and phase 2 (default 5 5)")
    p.add_argument("--unfreeze", type=int, default=30, help="weighted layers unfrozen in phase 2 (default 30)")
    p.add_argument("--unfreeze-from", metavar="LAYER",
                   help="instead, unfreeze everything from this layer on (e.g. stage5 for the offline backbones)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="phase 1; phase 2 uses a tenth (default 1e-3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="adam, or sgd with momentum 0.9")
    p.add_argument("--hidden", type=int, help="add a hidden dense layer of this width before the softmax")
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations, translations, zooms")
    p.add_argument("--no-probe", action="store_true", help="start the head from random weights")
    p.add_argument("--val-size", type=float, default=0.2, help="stratified validation fraction (default 0.2)")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs (default 3)")
    p.add_argument("--class-weight", choices=["balanced", "none"], default="balanced")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines, warnings only")
    return p


def main(args) -> int:
    result = finetune(FinetuneConfig(
        data=args.data, out=args.out, backbone=args.backbone, image_size=args.image_size,
        head_epochs=args.epochs[0], finetune_epochs=args.epochs[1], unfreeze=args.unfreeze,
        unfreeze_from=args.unfreeze_from,
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
