"""lit-edify: pixel-space Laplacian diffusion (Edify Image) as a PyTorch Lightning suite."""
