"""Training that resumes as if it had never stopped: the whole history, and early stopping's count.

Keras' ``BackupAndRestore`` brings back the weights and the epoch after an
interruption, not what came before: ``fit``'s history then starts at the
resumed epoch, and early stopping forgets its best score and its patience.
:class:`EpochLog` writes each finished epoch's figures (and its seconds) to a
JSON file, whole and renamed, and reads them back when a resumed run begins;
:class:`ResumedEarlyStopping` replays them into early stopping's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras

log = logging.getLogger(__name__)


class EpochLog(keras.callbacks.Callback):
    """Every finished epoch's logs and seconds, in ``path``, across interruptions."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.epochs, self._started = Path(path), [], 0.0

    def on_train_begin(self, logs=None):
        try:
            self.epochs = json.loads(self.path.read_text()) if self.path.exists() else []
        except ValueError:  # a damaged log: the history starts again, the weights do not
            self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        figures = {k: float(v) for k, v in (logs or {}).items()}
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch] + [
            {"epoch": epoch, "seconds": time.perf_counter() - self._started, **figures}]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.epochs))
        os.replace(partial, self.path)

    def history(self) -> dict[str, list[float]]:
        """Each figure over every epoch, as ``fit``'s history gives them for an uninterrupted run."""
        keys = dict.fromkeys(k for e in self.epochs for k in e if k not in ("epoch", "seconds"))
        return {k: [e[k] for e in self.epochs if k in e] for k in keys}

    @property
    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _structure(layer) -> list:
    """Every layer's type and weight shapes, in order, nested models walked: what a backup must match to load
    (names are left out: Keras numbers unnamed layers by what the process built before)."""
    inner = getattr(layer, "layers", None)
    if inner is not None:
        return [type(layer).__name__, [_structure(x) for x in inner]]
    return [type(layer).__name__, [list(w.shape) for w in layer.weights]]


def backup(model: keras.Model, folder: Path, epochs: EpochLog, *state: Path) -> keras.callbacks.BackupAndRestore:
    """Keras' ``BackupAndRestore`` in ``folder``, for this network only: the backup of another network (made by
    another version of this project, or other settings) would not load, so it is discarded with its epoch log
    and the files of other ``state``, and training starts over."""
    network = hashlib.sha256(json.dumps(_structure(model)).encode()).hexdigest()
    stamp = folder.with_name(folder.name + ".network")
    if folder.exists() and (not stamp.exists() or stamp.read_text() != network):
        log.warning("%s holds the backup of another network: training starts over", folder)
        shutil.rmtree(folder)
        epochs.remove()
        for path in state:
            path.unlink(missing_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(network)
    return keras.callbacks.BackupAndRestore(str(folder))


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping that, in a resumed run, counts the epochs before the interruption (from ``log``): its best
    score and its patience go on as if training had not stopped. (With ``restore_best_weights``, a best epoch
    before the interruption is not restored: its weights were not kept.)"""

    def __init__(self, log: EpochLog, **kwargs):
        super().__init__(**kwargs)
        self.log, self._replayed = log, False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._replayed = False

    def on_epoch_end(self, epoch, logs=None):
        if not self._replayed:  # the comparison is set up with the first epoch's metrics
            if self.monitor_op is None:
                self._set_monitor_op()
            for e in self.log.epochs:
                if e["epoch"] < epoch and e.get(self.monitor) is not None:
                    self.wait += 1  # as the epoch itself counted it
                    if self._is_improvement(e[self.monitor], self.best):
                        self.best, self.best_epoch, self.wait = e[self.monitor], e["epoch"], 0
            self._replayed = True
        super().on_epoch_end(epoch, logs)
