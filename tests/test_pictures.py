"""pictures.py: sample grids and latent interpolations."""
import torch
from PIL import Image

import pictures
from models import IMAGE_SHAPE, build_model


def tiny_flow():
    torch.manual_seed(0)
    return build_model({"model": "realnvp", "shape": list(IMAGE_SHAPE), "alpha": 1e-6, "blocks": 1, "hidden": 16,
                        "depth": 1, "actnorm": True, "shuffle": True, "mixing": False, "dropout": 0.0})


def test_sample_grid_is_square_and_not_blank(tmp_path):
    pictures.save_samples(tiny_flow(), tmp_path / "grid.png", 1e-6, n=16, temperature=0.7)
    image = Image.open(tmp_path / "grid.png").convert("L")
    assert image.size == (2 + 4 * 30, 2 + 4 * 30)  # a 4 x 4 grid of 28-pixel images, 2-pixel padding
    low, high = image.getextrema()
    assert high - low > 10


def test_interpolation_starts_and_ends_at_the_two_digits(monkeypatch):
    images = torch.randint(0, 256, (4, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    captured = {}
    monkeypatch.setattr(pictures, "save_image", lambda pixels, path, nrow: captured.update(pixels=pixels, nrow=nrow))
    pictures.save_interpolations(tiny_flow(), images, "unused.png", 1e-6, steps=5)
    pixels = captured["pixels"].view(2, 5, 1, 28, 28)
    bin_centres = (images.float() + 0.5) / 256
    # The ends decode back to the dequantized digits, v = (k + u) / 256: inside each pixel's bin.
    assert (pixels[:, 0] - bin_centres[0::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, -1] - bin_centres[1::2]).abs().max() <= 0.5 / 256 + 1e-5
    assert (pixels[:, 2] - bin_centres[0::2]).abs().max() > 0.1  # the middle is neither
    assert captured["nrow"] == 5
