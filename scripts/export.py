"""Export a trained classifier as one graph, uint8 pixels to class probabilities: ONNX, LiteRT, SavedModel, Keras."""

from pathlib import Path

from pipeline.commands import cli

from pipeline.deploy.config import ExportConfig

EXAMPLES = """\
  {prog} runs/tuxpaint/linear/svm.skops --format onnx --out tuxpaint.onnx
  {prog} runs/tuxpaint/linear/softmax.skops --format tflite --quantize int8 --calibration data/tuxpaint --out t.tflite
  {prog} runs/tuxpaint/finetuned/model.keras --format savedmodel --out tuxpaint_savedmodel
  {prog} runs/tuxpaint/linear/svm.skops --format keras --out tuxpaint.keras

The class names, input size and resize policy are written beside the model
(MODEL.json; cnn_codes.json inside a SavedModel). predict.py takes .onnx and
.tflite models; an .onnx model needs only numpy, pillow and onnxruntime."""


def build_parser(prog: str | None = None):
    p = cli.parser(__doc__, EXAMPLES, prog)
    p.add_argument("model", type=Path, help="a .skops bundle (fit_svm.py) or a .keras model (finetune.py)")
    cli.option(p, ExportConfig, "format", required=True, help="onnx, tflite (LiteRT), savedmodel or keras")
    p.add_argument("--out", type=Path, required=True, help="file to write (a folder for savedmodel)")
    cli.add_overwrite(p, ExportConfig)
    cli.option(p, ExportConfig, "quantize", help="tflite only: float16, or int8 (needs --calibration)")
    cli.option(p, ExportConfig, "calibration", type=Path,
               help="typical images for int8 quantization (folder, up to 200 used)")
    cli.option(p, ExportConfig, "weights", type=Path,
               help="the local backbone weights the bundle was extracted with")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def main(args) -> int:
    cfg = cli.settings(ExportConfig, args)
    from pipeline.deploy.export import card_path, export

    out = export(cfg)
    size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB) and {card_path(out)}")
    return 0


if __name__ == "__main__":
    cli.run(build_parser, main)
