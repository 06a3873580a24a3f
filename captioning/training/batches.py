"""Teacher-forcing batches: captions of similar length together, each batch padded to its own longest caption, read
one batch ahead; and one pass of them through a compiled model."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from captioning.data.text import pad_batch


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow generators


class CaptionBatches:
    """(features, input ids) -> target ids, each batch padded to its own longest caption.

    Captions of similar length are batched together (sorted within shuffled pools of 50 batches), so little time
    goes to padding; the batch order is reshuffled every epoch from the seed.

    With `by_image` (the attention decoder), a batch holds all the captions of about batch_size / (captions per
    image) images (images of similar longest caption together), and yields (maps, feature vectors, each caption's
    image row, input ids) -> target ids, so that each image's projection is computed once per batch.
    """

    def __init__(self, features, captions: list[list[list[int]]], batch_size: int,
                 shuffle: bool, seed: int, mirrored=None, by_image: bool = False):
        self.features = features
        self.mirrored = mirrored  # if given, each caption (image) is paired with either image, drawn anew every epoch
        self.by_image, self.captions = by_image, captions
        self.samples = [(i, ids) for i, image_caps in enumerate(captions) for ids in image_caps]
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.tokens = sum(len(ids) - 1 for _, ids in self.samples)
        if by_image:
            per_image = len(self.samples) / max(1, sum(1 for caps in captions if caps))
            self.batch_size = max(1, round(batch_size / per_image))
        self._plan()

    def _plan(self) -> None:
        units = self.captions if self.by_image else self.samples  # what a batch is made of: images or captions
        order = np.arange(len(units))
        if self.by_image:
            order = np.array([i for i in order if self.captions[i]], np.int64)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(order)
        pool = self.batch_size * 50
        if self.by_image:
            lengths = np.array([max((len(ids) for ids in caps), default=0) for caps in self.captions])
        else:
            lengths = np.array([len(ids) for _, ids in self.samples])
        chunks = [order[i:i + pool] for i in range(0, len(order), pool)]
        batches = []
        for chunk in chunks:
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self.batches = batches
        if self.mirrored is not None:
            self.flipped = np.random.default_rng([self.seed, self.epoch, 1]).random(len(units)) < 0.5

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        if self.by_image:
            return self._image_batch(self.batches[index])
        picked = [self.samples[i] for i in self.batches[index]]
        ids = pad_batch([seq for _, seq in picked])
        rows = [i for i, _ in picked]
        images = self.features[rows]
        if self.mirrored is not None:
            images = np.where(self.flipped[self.batches[index]][:, None], self.mirrored[rows], images)
        return (images, ids[:, :-1]), ids[:, 1:]

    def _image_batch(self, images: np.ndarray):
        images = np.sort(images)
        inputs = self.features[images]
        if self.mirrored is not None and self.flipped[images].any():
            flip = np.flatnonzero(self.flipped[images])
            mirrored = self.mirrored[images[flip]]
            inputs.features[flip], inputs.maps[flip] = mirrored.features, mirrored.maps
        owner = np.array([row for row, i in enumerate(images) for _ in self.captions[i]], np.int32)
        ids = pad_batch([seq for i in images for seq in self.captions[i]])
        maps = inputs.maps.reshape(len(images), -1, inputs.maps.shape[-1])
        return (maps, inputs.features.astype(np.float32), owner, ids[:, :-1]), ids[:, 1:]

    def start_at(self, epoch: int) -> None:
        """The batch order of epoch `epoch` + 1 (a resumed training's next epoch)."""
        self.epoch = epoch
        self._plan()

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.epoch += 1
            self._plan()

    def ahead(self):
        """One pass over the batches; each next batch is read (from the memory-mapped cache) in a thread while the
        model steps on the current one."""
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.__getitem__, 0) if len(self) else None
            for index in range(len(self)):
                batch = pending.result()
                if index + 1 < len(self):
                    pending = pool.submit(self.__getitem__, index + 1)
                yield batch


class WarmUp:
    """A linear warm-up of the learning rate over the first `steps` updates, up to `rate` (the config's
    learning_rate); after it, the rate is left to the optimizer (and to lr_decay). Read from the optimizer's own
    update count, so a resumed training continues it."""

    def __init__(self, rate: float, steps: int):
        self.rate, self.steps = rate, steps

    def before_update(self, optimizer) -> None:
        done = int(optimizer.iterations.numpy())
        if done < self.steps:
            optimizer.learning_rate.assign(self.rate * (done + 1) / self.steps)


def run_pass(model: keras.Model, batches: CaptionBatches, train: bool, warmup: WarmUp | None = None) -> float:
    """One pass of `batches` through the compiled model, training on them or not (with `warmup`, its rate set
    before each update); the mean loss per caption.

    A plain loop over `train_on_batch` rather than `fit` on a tf.data pipeline: fed from tf.data, the attention
    decoder's step ran at half speed here, with as much system time as user time (page faults in the step)."""
    step = model.train_on_batch if train else model.test_on_batch
    total, rows = 0.0, 0
    for x, y in batches.ahead():
        if warmup is not None:
            warmup.before_update(model.optimizer)
        total += float(step(x, y)) * len(y)
        rows += len(y)
    return total / max(rows, 1)


