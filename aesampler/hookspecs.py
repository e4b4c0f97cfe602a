"""Hook specifications: how a plugin adds components to aesampler.

A plugin is a module (or object) listed under the ``aesampler`` entry-point group of its
distribution. It implements one or more of the hooks below, each marked with
:data:`aesampler.hookimpl`. Every hook receives a ``register`` callback; the host owns the names,
so duplicates, provenance and error messages are handled in one place.

``register(name, factory, description=None)``:

* ``name`` -- a short identifier, unique within its kind, matching ``[a-z][a-z0-9_]*``
  (recipes refer to components by it).
* ``factory`` -- a class or function called with keyword parameters to build the component.
  Its signature is the component's parameter list: recipes and the Python API check parameters
  against it before calling.
* ``description`` -- one line for ``aesampler plugins``; defaults to the first line of the
  factory's docstring.

A bad name, a factory that is not callable or a name already taken makes ``register`` raise
:class:`aesampler.ComponentError`.

The host calls the hooks one plugin at a time, in load order (aesampler's own plugins first),
each through a pluggy hook caller restricted to that plugin, so hookwrappers and
``tryfirst``/``trylast`` act among one plugin's implementations. A plugin registers all its
components or none: if one of its hooks raises (any exception but ``KeyboardInterrupt``,
``SystemExit`` included), the components its other hooks registered are removed as well and the
plugin is reported as failed. A hook that no specification below knows fails its plugin unless
it is marked ``optionalhook=True``.

Which kind each hook registers is said once, in :data:`aesampler.kinds.KINDS`; :data:`KIND_HOOKS`
is derived from it, and importing this module checks that every kind there has its hook
specification here and every specification here its kind.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from . import kinds

PROJECT = "aesampler"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_corruptions(register: Register) -> None:
    """Register corruption processes C(x̃|x).

    The factory returns an :class:`aesampler.Corruption`: called as ``corruption(x,
    generator=g)``, it returns a new tensor of x's shape, never modifies ``x``, and draws all
    its noise from ``g``.
    """


@hookspec
def register_transitions(register: Register) -> None:
    """Register transition operators z_t -> z_{t+1}.

    The factory is called as ``factory(encoder=..., decoder=..., corruption=..., **params)``
    (the trained model's networks, the chain's corruption or None, and the other keys of the
    recipe's ``sampling.transition``) and returns an :class:`aesampler.Transition`, an
    ``nn.Module`` whose ``forward(z, *, generator=None)`` returns a
    :class:`aesampler.TransitionOutput` (``x``: d(z) if it was computed, else None), drawing all
    noise from ``generator``. ``encoder(x)`` returns an :class:`aesampler.Posterior`: ``mean``,
    and ``std`` (None for a deterministic encoder); ``posterior.sample(generator)`` draws
    mean + std * eps, or returns the mean when ``std`` is None.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register generative-autoencoder model kinds.

    The factory is called as ``factory(image_size=..., channels=..., **params)`` (the host takes
    image size and channels from the data) and returns an
    :class:`aesampler.models.GenerativeAutoencoder`: an ``nn.Module`` with ``encoder`` and
    ``decoder`` attributes, an ``architecture`` dict of plain values that rebuilds it through
    the same factory, ``optimizer_groups()`` and ``training_step(x, x_input, optimizers,
    generator)``, which runs its forward passes inside ``self.autocast()`` to follow
    ``train.precision`` (a step that does not trains in fp32).
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register image datasets.

    The factory is called as ``factory(split=..., **params)`` with split ``"train"``,
    ``"valid"`` or ``"test"`` and returns an :class:`aesampler.data.ImageDataset` whose items
    are ``(image, label)``: a float32 tensor (C, S, S) in [0, 1] and an int (-1 when there is no
    label). It must never download: a missing dataset raises an
    :class:`aesampler.AesamplerError` saying which files are expected where.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register sample-quality metrics, computed at every evaluated chain step.

    The factory is called with the recipe's parameters (``evaluate.metrics`` entries) and
    returns an :class:`aesampler.evaluation.Metric`: ``compute(data, step)`` returns a dict of
    :class:`aesampler.evaluation.Estimate` (value and bootstrap interval) by name, empty where
    the metric is undefined, from an :class:`aesampler.evaluation.EvaluationData` (latents
    ``z[t]``, ``images[t]``, ``features(t)``, held-out ``reference_z`` and
    ``reference_features``, ``prior_z``, ``train_images`` and their ``train_features()``,
    bootstrap settings; ``data.boot`` does the resampling). ``space`` says whether it reads
    latents (``"latent"``) or images (``"image"``); ``lower_is_better`` says how to read the
    numbers (None: context rather than a score).
    """


@hookspec
def register_feature_extractors(register: Register) -> None:
    """Register feature extractors, the spaces in which image metrics compare samples with data.

    The factory returns an :class:`aesampler.evaluation.FeatureExtractor`: ``check(train_set)``
    raises at once if it cannot work on this data (it runs before training); ``prepare(train_set,
    cache_dir, device, log)`` trains or loads what it needs (never downloading) and returns a
    description; ``features(x)`` maps images (N, C, H, W) in [0, 1] to features (N, F).
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Register start samplers: where chains start (the recipe's ``sampling.start``).

    The factory is called with the recipe's parameters and returns an
    :class:`aesampler.samplers.Sampler`. The host calls ``fit(context)`` once with an
    :class:`aesampler.samplers.SamplerContext` (``latent_shape``, ``encodings(split)``: draws from
    Q(z|x) of a data split's images, (N, *latent_shape) on the CPU, computed once; ``seed``,
    ``device``, ``model``, ``log``), then ``sample(n, generator)``, which returns ``n`` latents
    (n, *latent_shape) on the CPU, drawing all randomness from ``generator``. What ``fit``
    learned comes back from ``state_dict()`` as named plain CPU tensors (saved as safetensors in
    the run directory) and goes in again through ``load_state_dict(state)``, which raises
    :class:`aesampler.samplers.SamplerError` for a state that does not fit. Class attributes:
    ``fits`` (True when ``fit`` learns a state worth saving and reloading) and ``describes`` (a
    few words for captions saying what step 0 shows).
    """


@hookspec
def register_checkpoint_formats(register: Register) -> None:
    """Register checkpoint formats: folders, written by aesampler or another library, that a
    trained model is loaded from (``--checkpoint FOLDER``, ``load_model(FOLDER)``).

    The factory takes no parameters and returns an :class:`aesampler.formats.CheckpointFormat`:
    ``locate(path)`` returns the folder of ``path`` that holds a model in this format, or None
    (it reads names and small plain files only, never runs code from the folder);
    ``files(folder)`` lists the files whose bytes make the model (their digest keys what is
    cached for it); ``load(folder, registry, **options)`` returns the
    :class:`aesampler.models.GenerativeAutoencoder` on the CPU, its ``architecture`` holding
    ``image_size`` and ``channels``. ``model`` names the model kind (registered too) that
    recipes use for the format's folders; that kind's factory parameters, but ``image_size`` and
    ``channels``, are the ``options`` (the recipe's ``model:`` keys). aesampler never trains it.
    """


#: Component kind -> the hook through which plugins register components of that kind.
KIND_HOOKS: dict[str, str] = {kind.name: kind.hook for kind in kinds.KINDS}


def _specified_hooks() -> set[str]:
    """The names of the hook specifications in this module."""
    marker = f"{PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets
    return {name for name, obj in globals().items() if callable(obj) and hasattr(obj, marker)}


def check_kinds_have_hooks() -> None:
    """Raise RuntimeError unless the kinds' hooks and this module's specifications match."""
    specified = _specified_hooks()
    missing = sorted(set(KIND_HOOKS.values()) - specified)
    stray = sorted(specified - set(KIND_HOOKS.values()))
    if missing or stray:
        raise RuntimeError(
            "aesampler.hookspecs does not match aesampler.kinds.KINDS: "
            f"kinds without a hook specification: {missing or 'none'}; "
            f"hook specifications without a kind: {stray or 'none'}"
        )


check_kinds_have_hooks()
