"""Classify new images with a bundle (fit_svm.py), a fine-tuned (finetune.py) or an exported model (export.py)."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.deploy.config import PredictConfig
from pipeline.errors import UserError

EXAMPLES = """\
  {prog} runs/tuxpaint/svm.skops photo.jpg
  {prog} runs/tuxpaint/softmax.skops new_photos/ --top-k 3 --out predictions.csv
  {prog} runs/tuxpaint/svm.skops 'shots/**/*.jpg'
  {prog} runs/tuxpaint/softmax.skops new_photos/ --reject   # "unknown" for what looks like no class
  {prog} runs/tuxpaint/softmax.skops new_photos/ --explain heatmaps/   # where it looked, one PNG each
  {prog} runs/tuxpaint_finetuned/model.keras photo.jpg
  {prog} tuxpaint.onnx photo.jpg          # exported: needs only numpy, pillow, onnxruntime
  {prog} runs/tuxpaint/softmax.skops /shared/archive --ray auto --out /shared/preds.parquet

Images that cannot be decoded are listed with their reason, never dropped."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("model", type=Path,
                   help="a .skops bundle (fit_svm.py), .keras model (finetune.py), .onnx or .tflite (export.py)")
    p.add_argument("images", nargs="+", help="image files, folders (recursive) or glob patterns")
    cli.option(p, PredictConfig, "top_k", type=int, help="classes to show per image (default %(default)s)")
    p.add_argument("--out", type=Path, help="also write the predictions to this CSV file (with --ray: the Parquet "
                                            "folder they go to instead)")
    cli.add_overwrite(p, PredictConfig, "--out and --explain")
    cli.option(p, PredictConfig, "weights", type=Path,
               help="the local backbone weights the bundle was extracted with")
    cli.option(p, PredictConfig, "reject", action="store_true",
               help="call an image unknown when its top probability is under the model's threshold (chosen "
                    "when fitting so that about 5%% of known images fall under it; fit_svm.py --reject-rate)")
    cli.option(p, PredictConfig, "explain", type=Path, metavar="FOLDER",
               help="also write each image's heatmap of where the evidence for its top class lies, as a PNG in "
                    "FOLDER (occlusion on a 7x7 grid: 50 forward passes per image)")
    cli.option(p, PredictConfig, "batch_size", type=int, help="images per forward pass (default %(default)s)")
    cli.add_engine(p, PredictConfig)
    cli.add_ray(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(args) -> int:
    cfg = cli.settings(PredictConfig, args, progress=cli.progress(args))
    if args.ray:
        if cfg.explain is not None:
            raise UserError("heatmaps are drawn on this machine, not on a cluster: leave out --ray", param="explain")
        if args.out is None:
            raise UserError("on a cluster the predictions go to a Parquet folder: name it, e.g. preds.parquet",
                            param="out")
        from pipeline.scaleout.predict import predict_to_parquet

        rows = predict_to_parquet(cfg, args.ray)
        print(f"wrote {rows} predictions to {args.out}")
        return 0
    from pipeline.deploy.predict import predict_images, write_csv

    predictions, description = predict_images(cfg)
    print(description)
    for pred in predictions:
        if pred.skipped:
            print(f"{pred.path}\tskipped: {pred.skipped}")
        elif pred.value is not None:
            print(f"{pred.path}\tvalue {pred.value:.6g}")
        elif pred.labels is not None:
            print(f"{pred.path}\tlabels: " + (", ".join(f"{name} {prob:.3f}" for name, prob in pred.labels)
                                              or "none over its threshold"))
        else:
            print(f"{pred.path}\t" + ("unknown\t" if pred.unknown else "")
                  + "\t".join(f"{name} {prob:.3f}" for name, prob in pred.top))
    if args.out:
        write_csv(predictions, args.out, args.top_k, args.reject)
        print(f"wrote {args.out}")
    if cfg.explain is not None:
        print(f"wrote {sum(1 for p in predictions if p.heatmap)} heatmaps to {cfg.explain}")
    skipped = sum(1 for p in predictions if p.skipped)
    unknown = f" ({sum(p.unknown for p in predictions)} unknown)" if args.reject else ""
    print(f"{len(predictions) - skipped} images classified{unknown}, {skipped} skipped")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
