"""Fine-tune an ImageNet backbone on a labelled image folder: a new softmax head, then the later blocks."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.finetune.config import FinetuneConfig

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
    F = FinetuneConfig
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("data", type=Path, help="folder with one sub-folder per class, or a CSV manifest")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    cli.add_overwrite(p, F)
    cli.add_allow_outside(p, F)
    cli.option(p, F, "backbone", help="default %(default)s")
    cli.option(p, F, "mode", help="tail, full, or auto: full where a GPU is seen, tail on a CPU (default auto)")
    cli.add_image_size(p, F)
    cli.option(p, F, "top", metavar="LAYER",
               help="the feature layer the new head sits on (default %(default)s; an earlier one drops the blocks "
                    "after it)")
    cli.option(p, F, "dropout", type=float, help="dropout before the head (default %(default)s)")
    cli.option(p, F, "flip", action="store_true",
               help="mirror images left to right too (tail: every other view; full: half the time); leave off "
                    "where a mirror changes the class")
    tail = p.add_argument_group("tail mode")
    cli.option(tail, F, "cut", metavar="LAYER", help="the feature layer whose activations are cached; the blocks "
                                                     "after it train (default: stage5 for EfficientNet-Lite)")
    cli.option(tail, F, "views", type=int, help="views per training image, the image itself included "
                                                "(default %(default)s)")
    cli.option(tail, F, "tail_epochs", type=int, help="most epochs; early stopping decides (default %(default)s)")
    cli.option(tail, F, "block_lr_factor", type=float,
               help="the blocks' learning rate as a fraction of the head's (default %(default)s)")
    cli.add_engine(tail, F, "what runs the frozen front (default: ONNX Runtime on a CPU)")
    full = p.add_argument_group("full mode")
    full.add_argument("--epochs", type=int, nargs=2, default=[F.default("head_epochs"), F.default("finetune_epochs")],
                      metavar=("HEAD", "FINETUNE"), help="epochs of phase 1 and phase 2 (default %(default)s)")
    cli.option(full, F, "unfreeze", type=int, help="weighted layers unfrozen in phase 2 (default %(default)s)")
    cli.option(full, F, "unfreeze_from", metavar="LAYER",
               help="instead, unfreeze everything from this layer on (e.g. stage5 for the offline backbones)")
    cli.option(full, F, "augment", "--no-augment", action="store_false", help="no rotations, shifts, zooms or flips")
    cli.option(p, F, "learning_rate", type=float,
               help="the head's; full mode's phase 2 uses a tenth (default %(default)s)")
    cli.option(p, F, "optimizer", help="adam, or sgd with momentum 0.9")
    cli.option(p, F, "hidden", type=int, help="add a hidden dense layer of this width before the softmax")
    cli.option(p, F, "probe", "--no-probe", action="store_false", help="start the head from random weights")
    cli.option(p, F, "val_size", type=float, help="stratified validation fraction (default %(default)s)")
    cli.option(p, F, "patience", type=int, help="early-stopping patience in epochs (default %(default)s)")
    p.add_argument("--class-weight", choices=[*F.choices("class_weight"), "none"], default=F.default("class_weight"),
                   help="balanced: weight classes inversely to their size (default); none")
    cli.option(p, F, "batch_size", type=int, help="images per step (default %(default)s)")
    cli.option(p, F, "precision", help="auto: mixed float16 on a GPU, float32 on the CPU (default)")
    cli.option(p, F, "seed", type=int, help="fixes the split, initialisation and draws (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines, warnings only")
    return p


def main(args) -> int:
    cfg = cli.settings(FinetuneConfig, args, head_epochs=args.epochs[0], finetune_epochs=args.epochs[1],
                       class_weight=None if args.class_weight == "none" else args.class_weight,
                       progress=cli.progress(args))
    from pipeline.finetune.stage import finetune

    result = finetune(cfg)
    v, images = result.validation, result.validation_images
    if result.task.numeric:
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
