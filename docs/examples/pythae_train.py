"""Train a small VAE with pythae on scikit-learn's 8 x 8 digits: pythae's trainer writes its
folder under runs/pythae-vae/ (VAE_training_<date>/final_model/)."""

import torch
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.trainers import BaseTrainer, BaseTrainerConfig

import aesampler

digits = aesampler.get_registry().create("dataset", "digits", split="train", image_size=8)
images = torch.stack([image for image, _ in digits])  # (N, 1, 8, 8), values in [0, 1]

model = VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=4))  # pythae's default networks
config = BaseTrainerConfig(output_dir="runs/pythae-vae", num_epochs=2, no_cuda=True)
BaseTrainer(model, BaseDataset(images, torch.zeros(len(images))), training_config=config).train()
