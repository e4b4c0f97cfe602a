"""The wrappers for a user's own networks: named outputs, and clear errors for what does not fit.

Networks from other libraries return their outputs by name (pythae's ``ModelOutput`` is a dict
whose items are also attributes: ``embedding``, ``log_covariance``, ``reconstruction``). Passed
to the wrappers as they are, they used to fail inside the next network with an AttributeError;
the wrappers now read named outputs and raise a WrapperError at the first call otherwise.
"""

from __future__ import annotations

import dataclasses
import types
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

import aesampler
from aesampler import (
    Chain,
    ChainInputError,
    DeterministicEncoder,
    GaussianEncoder,
    ModuleDecoder,
    WrapperError,
)
from aesampler.evaluation import evaluate_samples
from aesampler.samplers import ExPostGMM, SamplerContext

LATENT, IMAGE = 3, (1, 4, 4)


class ModelOutput(OrderedDict):
    """Like pythae's ModelOutput: a dict whose items are also attributes."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __init__(self, **items):
        super().__init__()
        for key, value in items.items():
            self[key] = value


@dataclasses.dataclass
class EncoderOut:
    embedding: torch.Tensor
    log_covariance: torch.Tensor


class Returns(nn.Module):
    """A linear layer whose output is packed by ``pack``."""

    def __init__(self, n_in, n_out, pack):
        super().__init__()
        self.layer, self.pack = nn.Linear(n_in, n_out), pack

    def forward(self, x):
        return self.pack(self.layer(x.flatten(1)))


def pythae_like(stochastic: bool = True) -> tuple[nn.Module, nn.Module]:
    """An encoder and a decoder that answer as pythae's do."""
    torch.manual_seed(0)
    pixels = 16
    if stochastic:
        encoder = Returns(
            pixels,
            2 * LATENT,
            lambda h: ModelOutput(embedding=h[:, :LATENT], log_covariance=h[:, LATENT:]),
        )
    else:
        encoder = Returns(pixels, LATENT, lambda h: ModelOutput(embedding=h))
    decoder = Returns(
        LATENT, pixels, lambda h: ModelOutput(reconstruction=torch.sigmoid(h).reshape(-1, *IMAGE))
    )
    return encoder, decoder


# --- named outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pack",
    [
        lambda h: {"images": h},
        lambda h: ModelOutput(images=h),
        lambda h: types.SimpleNamespace(images=h, other=1),
        lambda h: namedtuple("Out", "other images")(0, h),
        lambda h: dataclasses.make_dataclass("Out", ["images"])(h),
    ],
    ids=["dict", "model-output", "attributes", "named-tuple", "dataclass"],
)
def test_decoder_reads_the_named_output(pack):
    decoder = ModuleDecoder(Returns(LATENT, 16, pack), latent_shape=LATENT, output="images")
    z = torch.randn(5, LATENT)
    torch.testing.assert_close(decoder(z), decoder.net.layer(z))
    assert "output='images'" in repr(decoder)


def test_encoders_read_named_outputs_from_dicts_dataclasses_and_model_outputs():
    x = torch.rand(6, *IMAGE)
    net = Returns(16, 2 * LATENT, lambda h: EncoderOut(h[:, :LATENT], h[:, LATENT:]))
    post = GaussianEncoder(net, mean_output="embedding", scale_output="log_covariance")(x)
    h = net.layer(x.flatten(1))
    torch.testing.assert_close(post.mean, h[:, :LATENT])
    torch.testing.assert_close(post.std, torch.exp(0.5 * h[:, LATENT:]))  # logvar by default
    encoder, _ = pythae_like(stochastic=True)
    post = GaussianEncoder(
        encoder, scale="log_std", mean_output="embedding", scale_output="log_covariance"
    )(x)
    h = encoder.layer(x.flatten(1))
    torch.testing.assert_close(post.std, torch.exp(h[:, LATENT:]))
    deterministic, _ = pythae_like(stochastic=False)
    post = DeterministicEncoder(deterministic, output="embedding")(x)
    assert post.is_deterministic and post.mean.shape == (6, LATENT)


def test_a_pythae_like_pair_works_everywhere_once_wrapped():
    """What the user study did with its eight lines of wrappers, with the wrappers' arguments."""
    enc_net, dec_net = pythae_like(stochastic=True)
    encoder = GaussianEncoder(enc_net, mean_output="embedding", scale_output="log_covariance")
    decoder = ModuleDecoder(dec_net, latent_shape=LATENT, output="reconstruction")
    chain = Chain(encoder, decoder, aesampler.GaussianCorruption(0.3))
    result = chain.run(n=8, steps=2, seed=0)
    assert result.x[2].shape == (8, *IMAGE) and result.z[2].shape == (8, LATENT)

    images = torch.rand(60, *IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = encoder(images).sample(torch.Generator().manual_seed(2))
    gmm = ExPostGMM(components=2)
    gmm.fit(SamplerContext.from_encodings({"train": z}, log=lambda line: None))
    started = chain.run(n=20, start=gmm, steps=1, seed=0, batchnorm="running")
    report = evaluate_samples(
        started.x[1], images, metrics=["frechet"], bootstrap=5, log=lambda line: None
    )
    assert "frechet" in report["metrics"]


# --- errors at the first call ---------------------------------------------------------------------


def test_a_decoder_returning_named_outputs_without_output_says_which_to_read():
    _, dec_net = pythae_like()
    decoder = ModuleDecoder(dec_net, latent_shape=LATENT)
    with pytest.raises(
        WrapperError,
        match=r"ModuleDecoder: the network returned a ModelOutput with outputs 'reconstruction'; "
        r"expected a tensor of images; pass output='reconstruction' to read that output",
    ):
        decoder(torch.randn(2, LATENT))


def test_the_user_studys_mistake_is_named_at_the_decoder_not_inside_the_encoder():
    """Passing pythae's networks as they are gave AttributeError: 'ModelOutput' object has no
    attribute 'reshape', raised in the encoder from the decoder's output."""
    enc_net, dec_net = pythae_like()
    chain = Chain(GaussianEncoder(enc_net), ModuleDecoder(dec_net, latent_shape=LATENT))
    with pytest.raises(WrapperError, match=r"^ModuleDecoder: .*output='reconstruction'"):
        chain.run(n=4, steps=1, seed=0)
    wrapped = ModuleDecoder(dec_net, latent_shape=LATENT, output="reconstruction")
    chain = Chain(GaussianEncoder(enc_net), wrapped)
    with pytest.raises(
        WrapperError,
        match=r"GaussianEncoder: the network returned a ModelOutput with outputs 'embedding', "
        r"'log_covariance'; expected a mean and a scale; name the two to read: "
        r"GaussianEncoder\(net, mean_output=\.\.\., scale_output=\.\.\., scale=\.\.\.\)",
    ):
        chain.run(n=4, steps=1, seed=0)


def test_a_deterministic_encoder_returning_named_outputs_without_output():
    enc_net, _ = pythae_like(stochastic=False)
    with pytest.raises(
        WrapperError,
        match=r"DeterministicEncoder: the network returned a ModelOutput with outputs "
        r"'embedding'; expected a tensor of latents z\. Pass output='embedding' to read that output",
    ):
        DeterministicEncoder(enc_net)(torch.rand(2, *IMAGE))
    two = Returns(16, 4, lambda h: {"a": h, "b": h})
    with pytest.raises(WrapperError, match=r"Pass output= the name of the output to read"):
        DeterministicEncoder(two)(torch.rand(2, *IMAGE))
    with pytest.raises(WrapperError, match=r"returned a str; expected a tensor of latents z"):
        DeterministicEncoder(Returns(16, 4, lambda h: "z"))(torch.rand(2, *IMAGE))


def test_a_missing_named_output_lists_what_is_there():
    enc_net, dec_net = pythae_like()
    with pytest.raises(
        WrapperError,
        match=r"ModuleDecoder: the network returned a ModelOutput with outputs 'reconstruction', "
        r"none named 'recon_x' \(output='recon_x'\)\. Pass output= the name of one of its outputs",
    ):
        ModuleDecoder(dec_net, output="recon_x")(torch.randn(2, LATENT))
    with pytest.raises(
        WrapperError,
        match=r"none named 'log_covarance' \(scale_output='log_covarance'\)\. "
        r"Did you mean 'log_covariance'\?",
    ):
        GaussianEncoder(enc_net, mean_output="embedding", scale_output="log_covarance")(
            torch.rand(2, *IMAGE)
        )
    attributes = Returns(16, 3, lambda h: types.SimpleNamespace(z=h, _hidden=h))
    with pytest.raises(WrapperError, match=r"a SimpleNamespace with outputs 'z', none named 'mu'"):
        DeterministicEncoder(attributes, output="mu")(torch.rand(2, *IMAGE))


def test_a_named_output_that_is_not_a_tensor_or_a_name_for_a_tensor():
    with pytest.raises(
        WrapperError, match=r"the network's output 'images' \(output='images'\) is a list"
    ):
        ModuleDecoder(Returns(3, 4, lambda h: {"images": [h]}), output="images")(torch.randn(2, 3))
    with pytest.raises(
        WrapperError,
        match=r"output='images' names an output, but the network returned a tensor of shape "
        r"\(2, 4\), which has no named outputs; leave out output",
    ):
        ModuleDecoder(nn.Linear(3, 4), output="images")(torch.randn(2, 3))
    with pytest.raises(WrapperError, match=r"returned a tuple of 2 items; expected a tensor"):
        ModuleDecoder(Returns(3, 4, lambda h: (h, h)))(torch.randn(2, 3))


def test_gaussian_encoder_named_outputs_come_in_pairs_and_are_names():
    with pytest.raises(ValueError, match=r"mean_output is given but not scale_output"):
        GaussianEncoder(nn.Identity(), mean_output="embedding")
    with pytest.raises(ValueError, match=r"scale_output is given but not mean_output"):
        GaussianEncoder(nn.Identity(), scale_output="log_covariance")
    with pytest.raises(ValueError, match=r"output must be the name of an output"):
        ModuleDecoder(nn.Identity(), output="")
    with pytest.raises(ValueError, match=r"output must be the name of an output"):
        DeterministicEncoder(nn.Identity(), output=0)
    pair = Returns(16, 3, lambda h: (h, "scale"))
    with pytest.raises(WrapperError, match=r"a pair whose scale is a str; expected two tensors"):
        GaussianEncoder(pair)(torch.rand(2, *IMAGE))


def test_a_wrong_latent_shape_is_named_instead_of_torchs_matmul_error():
    _, dec_net = pythae_like()
    decoder = ModuleDecoder(dec_net, latent_shape=5, output="reconstruction")  # it takes 3
    enc_net, _ = pythae_like()
    encoder = GaussianEncoder(enc_net, mean_output="embedding", scale_output="log_covariance")
    with pytest.raises(
        WrapperError,
        match=r"ModuleDecoder: the network failed on its first latents, of shape \(4, 5\) "
        r"\(N, \*latent_shape\) with latent_shape=\(5,\): mat1 and mat2 shapes cannot be "
        r"multiplied .*ModuleDecoder\(net, latent_shape=\.\.\.\)",
    ) as caught:
        Chain(encoder, decoder).run(n=4, steps=1, seed=0)
    assert isinstance(caught.value.__cause__, RuntimeError)  # torch's own, kept for --traceback


def test_only_the_first_call_and_only_shape_errors_are_translated():
    class FailsLater(nn.Module):
        def __init__(self, message):
            super().__init__()
            self.calls, self.message = 0, message

        def forward(self, z):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError(self.message)
            return z

    decoder = ModuleDecoder(FailsLater("size mismatch"), latent_shape=2)
    decoder(torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match="size mismatch") as caught:  # worked once: not ours
        decoder(torch.zeros(1, 2))
    assert not isinstance(caught.value, WrapperError)
    device = ModuleDecoder(FailsLater("never"), latent_shape=2)
    device.net.calls = 1
    device.net.message = "Expected all tensors to be on the same device"
    with pytest.raises(RuntimeError, match="same device") as caught:
        device(torch.zeros(1, 2))
    assert not isinstance(caught.value, WrapperError)
    unknown = ModuleDecoder(nn.Linear(3, 4))  # no latent_shape: nothing to blame
    with pytest.raises(RuntimeError, match="cannot be multiplied") as caught:
        unknown(torch.zeros(2, 5))
    assert not isinstance(caught.value, WrapperError)


def test_an_encoder_whose_latents_do_not_fit_the_decoder_is_stopped_at_the_first_step():
    enc_net = Returns(16, 2, lambda h: {"embedding": h})  # 2-D latents
    _, dec_net = pythae_like()  # takes 3-D latents
    chain = Chain(
        DeterministicEncoder(enc_net, output="embedding"),
        ModuleDecoder(dec_net, latent_shape=LATENT, output="reconstruction"),
    )
    with pytest.raises(
        ChainInputError,
        match=r"the transition at step 0 returned z of shape \(4, 2\) .* one latent of shape "
        r"\(3,\) per image",
    ):
        chain.run(n=4, steps=3, seed=0)


def test_a_transition_returning_something_else_than_a_tensor_is_named():
    class Named(aesampler.Transition):
        def forward(self, z, *, generator=None):
            return aesampler.TransitionOutput(z=ModelOutput(embedding=z))

    chain = Chain.from_transition(Named(), ModuleDecoder(nn.Identity(), latent_shape=2))
    with pytest.raises(ChainInputError, match=r"returned z that is a ModelOutput, not a tensor"):
        chain.run(n=2, steps=1, seed=0)


# --- what worked before works as before ----------------------------------------------------------


def test_positional_arguments_and_plain_outputs_behave_as_before():
    both = torch.cat([torch.zeros(5, 3), torch.full((5, 3), 2.0)], dim=1)
    post = GaussianEncoder(nn.Identity(), "std", 1)(both)  # scale and dim, positionally
    torch.testing.assert_close(post.std, torch.full((5, 3), 2.0))
    post = GaussianEncoder(nn.Identity(), "log_std", 0)(both.T)
    torch.testing.assert_close(post.mean, torch.zeros(3, 5))
    pair = Returns(4, 4, lambda h: (h, h))
    post = GaussianEncoder(pair, scale="softplus")(torch.ones(2, 4))
    torch.testing.assert_close(post.std, nn.functional.softplus(post.mean))
    assert ModuleDecoder(nn.Identity(), 4).latent_shape == (4,)  # latent_shape, positionally
    assert ModuleDecoder(nn.Identity(), (2, 3)).latent_shape == (2, 3)
    z = torch.randn(3, 4)
    assert torch.equal(ModuleDecoder(nn.Identity())(z), z)
    assert torch.equal(DeterministicEncoder(nn.Identity())(z).mean, z)
    with pytest.raises(ValueError, match="odd size"):  # still a ValueError
        GaussianEncoder(nn.Identity())(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"returned 3 tensors; expected 2"):
        GaussianEncoder(Returns(4, 4, lambda h: (h, h, h)))(torch.ones(2, 4))
    assert issubclass(WrapperError, aesampler.AesamplerError)
    assert issubclass(WrapperError, ValueError)
