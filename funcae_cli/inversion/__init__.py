"""Using a trained decoder: what to invert (inputs, targets), encoding (encode), the objective (objective),
batched latent search (search, invert), the latent model: code -> parameters regressor and the codes'
distribution (regressor, latent), new curves (sampling) and result records (reports)."""
