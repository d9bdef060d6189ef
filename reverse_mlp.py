"""Step 2: MLPs that shrink and grow dimensions, imported from step 1 (test.py).

    discriminator shape:  28*28 -> 50 -> 1      an image to one score
    generator shape:      1 -> 10 -> 28*28      one number to an image

The second map is what a GAN's generator does: it takes a low-dimensional random code
and spreads it out into the 784 pixels of an image, while the first, a discriminator,
boils an image down to one number saying how real it looks. Neither map can be
inverted: 784 numbers cannot be recovered from 1. That is the gap normalizing flows
close: a flow keeps the dimension (784 -> 784) and is a bijection, so it can give the
exact probability of an image, not only produce one.
"""
import torch
from torch import nn

from test import MLP

IMAGE_SIZE = 28 * 28


def discriminator_mlp():
    """28*28 -> 50 -> 1: a score for each image (a logit; a sigmoid turns it into P(real))."""
    return MLP([IMAGE_SIZE, 50, 1], [nn.ReLU(), None])


def generator_mlp():
    """1 -> 10 -> 28*28: a 1-D code to an image with pixels in (0, 1)."""
    return MLP([1, 10, IMAGE_SIZE], [nn.ReLU(), nn.Sigmoid()])


if __name__ == "__main__":
    torch.manual_seed(0)
    images = torch.rand(16, IMAGE_SIZE)
    scores = discriminator_mlp()(images)
    codes = torch.randn(16, 1)
    generated = generator_mlp()(codes)
    print(f"discriminator 28*28 -> 50 -> 1: images {list(images.shape)} -> scores {list(scores.shape)}")
    print(f"generator 1 -> 10 -> 28*28:    codes {list(codes.shape)} -> images {list(generated.shape)}")
    print(f"generated pixels lie in ({generated.min():.3f}, {generated.max():.3f})")
