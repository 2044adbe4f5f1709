"""New curves from a trained decoder: codes from a VAE prior or an AE training-code distribution, decoded."""
