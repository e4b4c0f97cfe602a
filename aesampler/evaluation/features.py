"""Feature extractors: the spaces in which image metrics compare samples with real images.

No Inception weights can be downloaded here, so the default is a small classifier that aesampler
trains itself on the dataset's labels (an *independent* network: it never sees the autoencoder).

* ``classifier``: a small CNN trained on the training split's labels; its penultimate layer
  (128 features) is the feature space. Trained once per data set and settings, then cached.
* ``inception``: torchvision's Inception-v3 from a weights file the user points to (never
  downloaded); its 2048 pooled features.
* ``pixels``: the images themselves, average-pooled to at most 16 × 16, for quick checks.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..checks import check_int
from ..data import ImageDataset
from ..errors import AesamplerError, alternatives, named, quoted
from ..rundir import atomic_write_bytes


class FeatureError(AesamplerError):
    """A feature extractor cannot be built or trained (missing weights, no labels)."""


class FeatureExtractor(abc.ABC):
    """Maps images (N, C, H, W) in [0, 1] to features (N, F)."""

    name: str

    def check(self, train_set: ImageDataset) -> None:
        """Raise FeatureError if ``prepare`` would fail on this data; runs before training."""
        return None

    def prepare(
        self,
        train_set: ImageDataset,
        cache_dir: Path,
        device: torch.device,
        log: Callable[[str], None],
    ) -> dict:
        """Get ready for this data (train, load weights); return a description for metrics.json."""
        return {"name": self.name}

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor: ...

    @torch.no_grad()
    def __call__(self, x: Tensor, batch_size: int = 256) -> Tensor:
        # One copy to the host at the end, not one (and a synchronisation) per batch.
        parts = [self.features(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
        return torch.cat(parts).cpu()


class PixelFeatures(FeatureExtractor):
    """The images themselves, average-pooled to at most ``size`` × ``size``."""

    name = "pixels"

    def __init__(self, size: int = 16):
        check_int("size", size)
        self.size = size

    def features(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height > self.size or width > self.size:
            x = F.adaptive_avg_pool2d(x, (min(height, self.size), min(width, self.size)))
        return x.flatten(1)


class _SmallCNN(nn.Module):
    def __init__(self, channels: int, classes: int, width: int = 32, features: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, features),
            nn.ReLU(),
        )
        self.head = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ClassifierFeatures(FeatureExtractor):
    """A small CNN trained on the dataset's labels; features are its penultimate layer.

    Args:
        epochs: training epochs (Adam, lr 1e-3).
        seed: seeds its initialisation and data order.
    """

    name = "classifier"

    def __init__(self, epochs: int = 5, seed: int = 0):
        check_int("epochs", epochs)
        self.epochs, self.seed = epochs, seed
        self.net: _SmallCNN | None = None

    def check(self, train_set):
        labels = named("labels", recipe=None)  # a recipe's dataset has labels or not
        pixels = f"use {named('evaluate.feature_extractor.name', 'pixels')}"
        if train_set is None:
            raise FeatureError(
                "the classifier feature extractor needs labels to train on, and no training "
                f"images were given; {alternatives(labels and f'pass {labels}', pixels)}"
            )
        if not train_set.num_classes:
            data = named("data", recipe="dataset {value!r}", value=train_set.name)
            weights = named("evaluate.feature_extractor.weights", "PATH")
            raise FeatureError(
                f"the classifier feature extractor needs labels, and {data} has none; "
                + alternatives(
                    labels and f"give labels ({labels})",
                    pixels,
                    f"inception with a local weights file ({weights})",
                )
            )

    def prepare(self, train_set, cache_dir, device, log):
        self.check(train_set)
        classes = train_set.num_classes
        key = json.dumps(
            [
                train_set.name,
                train_set.image_size,
                train_set.channels,
                len(train_set),
                classes,
                self.epochs,
                self.seed,
            ],
            separators=(",", ":"),
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        file = Path(cache_dir) / f"classifier-{train_set.name}-{digest}.safetensors"
        self.net = _SmallCNN(train_set.channels, classes)
        info, problem = self._load(file) if file.exists() else (None, None)
        if info is not None:
            log(f"feature classifier: cached {file} (held-out accuracy {info['accuracy']:.3f})")
        else:
            if problem:
                log(f"feature classifier: cache {file} is unreadable ({problem}); retraining")
            info = self._train(train_set, device, log)
            weights = save({k: v.cpu().contiguous() for k, v in self.net.state_dict().items()})
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(file, weights)
                atomic_write_bytes(file.with_suffix(".json"), json.dumps(info, indent=2).encode())
            except OSError as error:
                raise FeatureError(
                    f"cannot write the feature classifier cache {quoted(file)}: "
                    f"{error.strerror or error}; point {named('evaluate.cache_dir')} at a "
                    "writable directory"
                ) from error
            if problem:
                log(f"feature classifier: replaced the unreadable cache {file}")
        self.net.to(device).eval()
        return {"name": self.name, "cache": str(file), **info}

    def _load(self, file: Path) -> tuple[dict | None, str | None]:
        """Cached weights and their description, or (None, why not) for a damaged cache."""
        assert self.net is not None
        try:
            self.net.load_state_dict(load_file(str(file)))
            info = json.loads(file.with_suffix(".json").read_text())
            if not isinstance(info, dict) or not isinstance(info.get("accuracy"), int | float):
                raise ValueError("its JSON description has no accuracy")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            # truncated or foreign weights, shapes that do not fit, a missing or broken JSON file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return None, f"{type(error).__name__}: {reason}"[:300]
        return info, None

    def _train(self, train_set: ImageDataset, device: torch.device, log) -> dict:
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.net = _SmallCNN(train_set.channels, train_set.num_classes)  # seeded initialisation
        net = self.net.to(device)
        holdout = max(1, len(train_set) // 10)  # the classifier's own validation images
        order = torch.randperm(len(train_set), generator=generator)
        fit = torch.utils.data.Subset(train_set, order[holdout:].tolist())
        check = torch.utils.data.Subset(train_set, order[:holdout].tolist())
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        loader = DataLoader(fit, batch_size=64, shuffle=True, generator=generator)
        for _ in range(self.epochs):
            net.train()
            for x, y in loader:
                loss = F.cross_entropy(net(x.to(device)), y.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(check, batch_size=256):
                correct += (net(x.to(device)).argmax(1).cpu() == y).sum().item()
        accuracy = correct / len(check)
        log(f"feature classifier: trained on {len(fit)} images, held-out accuracy {accuracy:.3f}")
        return {
            "accuracy": accuracy,
            "trained_on": len(fit),
            "epochs": self.epochs,
            "seed": self.seed,
        }

    def features(self, x: Tensor) -> Tensor:
        assert self.net is not None, "prepare() first"
        device = next(self.net.parameters()).device
        return self.net.body(x.to(device))


class InceptionFeatures(FeatureExtractor):
    """torchvision's Inception-v3 (2048 pooled features) from a local weights file.

    Args:
        weights: path to a state dict of ``torchvision.models.inception_v3`` (for example the
            file of ``Inception_V3_Weights.IMAGENET1K_V1``, fetched on a machine with network
            access). Nothing is ever downloaded.
    """

    name = "inception"

    def __init__(self, weights: str | None = None):
        self.weights = weights
        self.net: nn.Module | None = None

    def check(self, train_set):
        self._weights_file()

    def _weights_file(self) -> Path:
        if not self.weights:
            raise FeatureError(
                "the inception feature extractor needs a local weights file: save torchvision's "
                "inception_v3 weights (Inception_V3_Weights.IMAGENET1K_V1) on a machine with "
                f"network access and set {named('evaluate.feature_extractor.weights', 'PATH')}; "
                "aesampler never downloads weights"
            )
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise FeatureError(f"inception weights file {quoted(path)} does not exist")
        return path

    def prepare(self, train_set, cache_dir, device, log):
        path = self._weights_file()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        try:
            state = (
                load_file(str(path))
                if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu", weights_only=True)
            )
            state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
            net.load_state_dict(state)
        except Exception as error:
            raise FeatureError(
                f"cannot load Inception-v3 weights from {quoted(path)}: {error}"
            ) from error
        net.fc = nn.Identity()  # the 2048 pooled features
        self.net = net.to(device).eval()
        return {"name": self.name, "weights": str(path)}

    def features(self, x: Tensor) -> Tensor:
        assert self.net is not None, "prepare() first"
        if x.shape[1] not in (1, 3):
            raise FeatureError(
                f"the inception feature extractor takes 1- or 3-channel images, got {x.shape[1]}"
            )
        device = next(self.net.parameters()).device
        x = x.to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], device=device)[:, None, None]
        return self.net((x - mean) / std)
