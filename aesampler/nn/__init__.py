"""Plain PyTorch networks. Nothing here knows about recipes, registries or plugins."""

from .dcgan import Adversary, DCGANDecoder, DCGANEncoder

__all__ = ["Adversary", "DCGANDecoder", "DCGANEncoder"]
