"""A deterministic, resumable stream of training batches.

Detectron2's training loader draws a random shuffle per run and random augmentations from each
data-loader worker's RNG, so a resumed run sees different data than an uninterrupted one, and
the data depends on the number of workers and processes. Here everything is a function of the
seed and of the sample's *position* in the global stream:

- position p (0, 1, 2, ...) holds image ``permutation(epoch = p // n)[p % n]``, one fresh
  permutation of the n images per epoch, as Detectron2's ``TrainingSampler``;
- iteration i uses positions ``i * B ... i * B + B - 1`` (B = SOLVER.IMS_PER_BATCH); process r
  of W takes ``i * B + r + W * j`` for j < B / W (the ``TrainingSampler`` interleaving);
- the mapper (augmentations) runs with Python's, NumPy's and torch's CPU RNGs seeded from
  (seed, p), and these RNGs are restored afterwards;
- an image that cannot be read is replaced by the next one of the set, with the seed of
  (seed, p, attempt), and reported (``grouppose.data.unreadable_images``).

So a run resumed at iteration i continues with exactly the batches the uninterrupted run would
have used, for any number of data-loader workers, and W processes see the same images and
augmentations as one process with the same total batch.
"""

import random
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from grouppose.data.unreadable_images import UNREADABLE_KEY, Report, pop_unreadable
from grouppose.engine.preemption import ignore_stop_signals
from grouppose.image_io import UnreadableImageError

__all__ = ["TrainingBatches", "TrainingStream", "derive_seed"]

_PERMUTATION, _SAMPLE = 0, 1  # seed domains, so that permutation and sample seeds differ


def derive_seed(seed: int, *values: int) -> int:
    """A 32-bit seed that depends on ``seed`` and all of ``values`` (non-negative ints)."""
    return int(np.random.SeedSequence([seed, *values]).generate_state(1)[0])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU RNGs for the block; restore them afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class TrainingStream(IterableDataset):
    """This process's training batches from ``start_iter`` on, each a list of mapped dicts.

    Within a ``DataLoader`` with several workers, worker w of m produces iterations
    ``start_iter + w, start_iter + w + m, ...``; the DataLoader takes batches from its workers
    in turn, which restores the iteration order.
    """

    def __init__(
        self,
        dataset: DatasetFromList,
        mapper: Callable[[Dict], Optional[Dict]],
        total_batch_size: int,
        seed: int,
        start_iter: int = 0,
    ):
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % self.world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of the "
                f"number of processes ({self.world_size})"
            )
        if len(dataset) == 0:
            raise ValueError("the training dataset (DATASETS.TRAIN) is empty")
        self.dataset = dataset
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.seed = seed
        self.start_iter = start_iter
        self._permutation_epoch = -1
        self._permutation: List[int] = []

    def __iter__(self) -> Iterator[List[Dict]]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        iteration = self.start_iter + worker_id
        while True:
            yield self.batch(iteration)
            iteration += num_workers

    def batch(self, iteration: int) -> List[Dict]:
        """This process's share of the global batch of ``iteration``."""
        first = iteration * self.total_batch_size + self.rank
        per_process = self.total_batch_size // self.world_size
        return [self.sample(first + self.world_size * j) for j in range(per_process)]

    def image_index(self, position: int) -> int:
        """Index into the dataset of the image at stream ``position``."""
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._permutation_epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _PERMUTATION, epoch))
            self._permutation = torch.randperm(len(self.dataset), generator=generator).tolist()
            self._permutation_epoch = epoch
        return self._permutation[offset]

    def sample(self, position: int) -> Dict:
        """The mapped dict at stream ``position``. When the mapper drops an image (returns
        None) or cannot read it, the next images in dataset order are tried, still
        deterministically; a replacement carries the unreadable ones' reports (UNREADABLE_KEY)."""
        index = self.image_index(position)
        unreadable: List[Report] = []
        for attempt in range(len(self.dataset)):
            record = self.dataset[(index + attempt) % len(self.dataset)]
            with seeded_rngs(derive_seed(self.seed, _SAMPLE, position, attempt)):
                try:
                    mapped = self.mapper(record)
                except UnreadableImageError as e:
                    unreadable.append((record["file_name"], str(e)))
                    continue
            if mapped is not None:
                if unreadable:
                    mapped[UNREADABLE_KEY] = unreadable
                return mapped
        if unreadable:
            raise UnreadableImageError(
                f"no image of DATASETS.TRAIN can be read, e.g. {unreadable[0][1]}"
            )
        raise ValueError("the training mapper dropped every image of DATASETS.TRAIN")


def _as_is(batch: List[Dict]) -> List[Dict]:
    """DataLoader collate function: batches stay lists of dicts, as Detectron2's do."""
    return batch


class TrainingBatches:
    """The trainer's data loader: an iterable of ``TrainingStream`` batches.

    Iterating builds the DataLoader (and starts its workers) lazily, at the first batch, so that
    ``start_iter`` and ``seed`` can be set from a checkpoint after the trainer is constructed
    (Detectron2's SimpleTrainer calls ``iter()`` on its loader in its constructor).

    Attributes:
        unreadable: reports of the unreadable images replaced in the batches yielded so far,
            for ``grouppose.engine.unreadable_image_hook`` to take.
    """

    def __init__(
        self,
        dataset_dicts: List[Dict],
        mapper: Callable[[Dict], Optional[Dict]],
        total_batch_size: int,
        num_workers: int,
        seed: int,
    ):
        # Serialized once, so that workers share the dicts instead of copying Python objects.
        self.dataset = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.start_iter = 0
        self.unreadable: List[Report] = []

    def __iter__(self) -> Iterator[List[Dict]]:
        stream = TrainingStream(
            self.dataset, self.mapper, self.total_batch_size, self.seed, self.start_iter
        )
        for batch in DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
            worker_init_fn=ignore_stop_signals,
        ):
            self.unreadable.extend(pop_unreadable(batch))
            yield batch
