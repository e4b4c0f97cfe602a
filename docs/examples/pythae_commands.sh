aesampler sample docs/examples/pythae_digits.yaml --checkpoint runs/pythae-vae
aesampler evaluate docs/examples/pythae_digits.yaml --checkpoint runs/pythae-vae
aesampler compare-samplers docs/examples/pythae_digits.yaml --checkpoint runs/pythae-vae
