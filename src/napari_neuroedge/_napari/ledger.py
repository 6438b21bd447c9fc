"""The correction ledger of a membrane layer: what was done to each slice, and the rules that follow from it.

One :class:`SliceRecord` per slice that was predicted, painted, marked or exported; slices are ints (0 for a 2D
image). Records are frozen: the ledger changes only through its methods, and each method that changes a record
emits :attr:`Ledger.changed` with the slices it changed. The rules live here, so they are tested without a
viewer: a slice is **corrected** (training data: Export and Fine-tune take it) when it was edited after a
prediction or marked by the user; a slice first painted while never predicted is **scratch**: its labels are not
a corrected prediction, so it is training data only once marked; the **reference** is the prediction the user
corrected, kept (bit-packed) at the first edit or mark, so a later prediction does not change what "corrected"
means; a re-prediction **keeps** the labels of edited or corrected slices.

The ledger is stored with its layer, in ``layer.metadata["neuroedge"]["ledger"]`` (:func:`ledger_of`), so it
follows the layer. No Qt and no napari here (only psygnal, which napari itself uses for its events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from psygnal import Signal

KEY = "neuroedge"  # the plugin's key in a layer's metadata
LEDGER = "ledger"  # the ledger's key in it

#: the current prediction of a slice (uint8 (y, x), 1 = membrane), or None if it has none
Current = Callable[[int], "np.ndarray | None"]


@dataclass(frozen=True)
class Reference:
    """A kept prediction: ``shape`` (y, x) and its membrane pixels as packed bits (immutable bytes)."""

    shape: tuple[int, ...]
    bits: bytes

    @classmethod
    def of(cls, prediction: np.ndarray) -> Reference:
        pred = np.asarray(prediction)
        return cls(tuple(int(s) for s in pred.shape), np.packbits(pred.ravel() > 0).tobytes())

    def array(self) -> np.ndarray:
        """uint8 (y, x): 1 = membrane."""
        n = int(np.prod(self.shape))
        return np.unpackbits(np.frombuffer(self.bits, np.uint8), count=n).reshape(self.shape)


@dataclass(frozen=True)
class SliceRecord:
    """What was done to one slice.

    ``predicted``: it has a prediction (``model``: its provenance dict, ``threshold``: its membrane threshold;
    both stay those of the prediction the user corrected when a re-prediction kept the slice); ``uncertainty``:
    that prediction came with TTA variance; ``edited``: the user painted its labels; ``corrected``: it is training
    data; ``scratch``: first painted or marked while never predicted; ``reference``: the prediction corrected;
    ``exports``: training-set folder -> digest of the labels exported there.
    """

    predicted: bool = False
    uncertainty: bool = False
    model: Mapping[str, Any] | None = None
    threshold: float | None = None
    edited: bool = False
    corrected: bool = False
    scratch: bool = False
    reference: Reference | None = None
    exports: Mapping[str, str] = field(default_factory=dict)

    @property
    def exported(self) -> bool:
        return bool(self.exports)


EMPTY = SliceRecord()


def _slices_where(attr: str, doc: str) -> property:
    """A read-only property: the frozenset of slices whose record has ``attr`` set."""
    return property(lambda self: frozenset(z for z, r in self._records.items() if getattr(r, attr)), doc=doc)


class Ledger:
    """The per-slice records of one membrane layer; see the module docstring for the rules."""

    changed = Signal(object)  # frozenset[int]: the slices whose record changed

    def __init__(self) -> None:
        self._records: dict[int, SliceRecord] = {}
        self._threshold = 0.5

    @property
    def threshold(self) -> float:
        """The last prediction's membrane threshold (a slice without its own threshold uses it)."""
        return self._threshold

    # ------------------------------------------------------------------ reading
    def record(self, z: int) -> SliceRecord:
        return self._records.get(int(z), EMPTY)

    def records(self) -> dict[int, SliceRecord]:
        """{slice: record} (a copy; the records themselves are frozen)."""
        return dict(self._records)

    predicted = _slices_where("predicted", "Slices with a prediction.")
    uncertain = _slices_where("uncertainty", "Predicted slices with TTA variance ('next most uncertain slice').")
    edited = _slices_where("edited", "Slices the user painted.")
    corrected = _slices_where("corrected", "Slices that are training data.")
    scratch = _slices_where("scratch", "Slices first painted or marked while never predicted.")
    exported = _slices_where("exported", "Slices exported to a training-set folder.")

    def is_corrected(self, z: int) -> bool:
        return self.record(z).corrected

    def never_predicted(self, z: int) -> bool:
        """Whether the labels of ``z`` are not a corrected prediction (scratch, or no prediction at all)."""
        r = self.record(z)
        return r.scratch or not r.predicted

    def training_slices(self) -> list[int]:
        """The slices Export writes and Fine-tune trains on, in order."""
        return sorted(self.corrected)

    def left_out(self) -> list[int]:
        """Slices painted but never predicted and not marked corrected: not training data (the user is told)."""
        return sorted((self.edited & self.scratch) - self.corrected)

    def kept_on_repredict(self, slices: Iterable[int]) -> set[int]:
        """Of ``slices`` about to be predicted, those whose labels are the user's (edited or corrected)."""
        return {int(z) for z in slices if self.record(z).edited or self.record(z).corrected}

    def model_of(self, z: int) -> Mapping[str, Any] | None:
        return self.record(z).model

    def threshold_of(self, z: int) -> float:
        """The membrane threshold of the prediction of ``z`` (else the last prediction's)."""
        t = self.record(z).threshold
        return self.threshold if t is None else t

    def reference_of(self, z: int, current: Current | None = None) -> np.ndarray | None:
        """uint8 (y, x): the prediction the user corrected on ``z``: None for a scratch slice; the one kept at the
        first edit or mark; else ``current(z)`` (the prediction shown now, or None if there is none)."""
        r = self.record(z)
        if r.scratch:
            return None
        if r.reference is not None:
            return r.reference.array()
        return current(int(z)) if current is not None else None

    def needs_export(self, z: int, folder: str, digest: str) -> bool:
        """Whether ``z`` with labels ``digest`` was not yet exported unchanged to ``folder``."""
        return self.record(z).exports.get(str(folder)) != digest

    # ------------------------------------------------------------------ changing
    def _set(self, changes: dict[int, SliceRecord]) -> None:
        changes = {z: r for z, r in changes.items() if self.record(z) != r}
        if not changes:
            return
        for z, r in changes.items():
            if r == EMPTY:
                self._records.pop(z, None)
            else:
                self._records[z] = r
        self.changed.emit(frozenset(changes))

    def mark_predicted(self, slices: Iterable[int], model: Mapping[str, Any], threshold: float,
                       keep: Iterable[int] = (), uncertainty: bool = False) -> None:
        """Predict wrote ``slices`` with ``model`` at ``threshold`` (with TTA variance if ``uncertainty``); the
        slices in ``keep`` kept the user's labels and the provenance of the prediction they correct."""
        keep = {int(z) for z in keep}
        self._threshold = float(threshold)
        out = {}
        for z in map(int, slices):
            r = replace(self.record(z), predicted=True, uncertainty=self.record(z).uncertainty or uncertainty)
            if z not in keep:
                r = replace(r, model=dict(model), threshold=float(threshold))
            out[z] = r
        self._set(out)

    def forget(self, slices: Iterable[int]) -> None:
        """Predict replaced the user's labels of ``slices``: neither edited, corrected nor scratch, no reference."""
        self._set({z: replace(self.record(z), edited=False, corrected=False, scratch=False, reference=None)
                   for z in map(int, slices)})

    def _taken(self, zs: Iterable[int], scratch_too: bool, current: Current | None,
               out: dict[int, SliceRecord]) -> set[int]:
        """Into ``out``: ``zs`` taken as corrected (see :meth:`take_as_corrected`); returns the scratch ones."""
        scratch = set()
        for z in zs:
            r = out.get(z, self.record(z))
            if r.reference is None and current is not None:
                pred = current(z)
                if pred is not None:
                    r = replace(r, reference=Reference.of(pred))
            if not r.predicted:
                scratch.add(z)
            out[z] = replace(r, scratch=r.scratch or not r.predicted,
                             corrected=r.corrected or scratch_too or r.predicted)
        return scratch

    def take_as_corrected(self, slices: Iterable[int], scratch_too: bool, current: Current | None = None) -> set[int]:
        """Make ``slices`` training data, keeping ``current(z)`` (their prediction now) as the reference where none
        is kept yet. A never-predicted slice becomes scratch and is marked corrected only with ``scratch_too`` (the
        user said its labels are ground truth everywhere). Returns those scratch slices."""
        out: dict[int, SliceRecord] = {}
        scratch = self._taken({int(z) for z in slices}, scratch_too, current, out)
        self._set(out)
        return scratch

    def record_stroke(self, slices: Iterable[int], current: Current | None = None) -> set[int]:
        """The user painted ``slices``: each becomes edited; a first edit of a predicted slice makes it corrected
        (its prediction kept as the reference), of a never-predicted one scratch, NOT corrected (one stroke on an
        empty slice is not a corrected slice). Returns the slices that became scratch (the user is warned)."""
        zs = {int(z) for z in slices}
        new = {z for z in zs if not self.record(z).edited}
        out = {z: replace(self.record(z), edited=True) for z in zs}
        scratch = self._taken(new, False, current, out)
        self._set(out)
        return scratch

    def mark_corrected(self, z: int, on: bool = True, current: Current | None = None) -> None:
        """The user marked ``z`` corrected (a scratch slice too: its labels are then ground truth everywhere)
        or not corrected (it stays edited)."""
        if on:
            self.take_as_corrected([z], scratch_too=True, current=current)
        else:
            self._set({int(z): replace(self.record(z), corrected=False)})

    def mark_exported(self, z: int, folder: str, digest: str) -> None:
        """Slice ``z`` with labels ``digest`` was exported to the training-set ``folder``."""
        r = self.record(z)
        self._set({int(z): replace(r, exports={**r.exports, str(folder): digest})})

    # ------------------------------------------------------------------ copies (napari copies layer metadata)
    def __deepcopy__(self, memo: dict[int, Any]) -> Ledger:
        out = Ledger()
        out._records, out._threshold = dict(self._records), self._threshold  # records are frozen: share them
        return out

    __copy__ = lambda self: self.__deepcopy__({})  # noqa: E731

    def __repr__(self) -> str:
        return (f"Ledger(predicted={sorted(self.predicted)}, edited={sorted(self.edited)}, "
                f"corrected={sorted(self.corrected)}, scratch={sorted(self.scratch)}, "
                f"exported={sorted(self.exported)})")


def ledger_of(layer: Any) -> Ledger:
    """The :class:`Ledger` of a membrane layer (``layer.metadata["neuroedge"]["ledger"]``; made on first use)."""
    meta = layer.metadata.setdefault(KEY, {})
    led = meta.get(LEDGER)
    if not isinstance(led, Ledger):
        led = meta[LEDGER] = Ledger()
    return led
