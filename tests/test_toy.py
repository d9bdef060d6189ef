"""toy.py: a flow trained on two moons fits them better than a Gaussian, is a density, and is drawn."""
import pytest
import torch
from PIL import Image

import toy
from realnvp import RealNVP

MARGIN = 0.5  # nats per point by which the trained flow must beat the Gaussian fit


@pytest.fixture(scope="module")
def moons():
    """toy.run on two moons with one small RealNVP trained for 300 steps."""
    torch.manual_seed(0)
    flows = {"RealNVP": lambda: RealNVP.build([2], blocks=2, hidden=32, depth=2)}
    return toy.run({"two moons": toy.DATA_SETS["two moons"]}, flows, steps=300)


def log_likelihood_by_autograd(flow, x):
    """log N(z; 0, I) + log |det dz/dx| with the Jacobian from autograd, not the flow's own log-det."""
    x = x.clone().requires_grad_()
    z, _ = flow(x)
    # Each z depends only on its own x, so the gradient of a column's sum is that row of each Jacobian.
    dz1, dz2 = (torch.autograd.grad(z[:, i].sum(), x, retain_graph=True)[0] for i in range(2))  # [n, 2] each
    determinant = dz1[:, 0] * dz2[:, 1] - dz1[:, 1] * dz2[:, 0]
    return torch.distributions.Normal(0.0, 1.0).log_prob(z.detach()).sum(1) + determinant.abs().log()


def test_a_trained_flow_beats_a_gaussian_on_two_moons(moons):
    flow = moons["two moons"]["flows"]["RealNVP"]["flow"]
    test = toy.two_moons(5000, torch.Generator().manual_seed(3))
    gaussian = toy.gaussian_fit(toy.two_moons(5000, torch.Generator().manual_seed(4)))
    flow_score = log_likelihood_by_autograd(flow, test).mean()
    gaussian_score = gaussian.log_prob(test).mean()
    assert flow_score > gaussian_score + MARGIN, (flow_score, gaussian_score)


def test_the_learned_density_integrates_to_one_on_the_grid(moons):
    result = moons["two moons"]["flows"]["RealNVP"]
    assert result["outside"] < 0.005, "the flow puts mass outside the grid"
    assert abs(result["integral"] - 1) < 0.01, result["integral"]


def test_the_picture_is_a_png_of_normalised_densities(moons, tmp_path):
    path = tmp_path / "toy.png"
    figure = toy.draw(moons, path, follow=("two moons", "RealNVP"))
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.width > image.height > 100
    densities = [panel.images[0] for panel in figure.axes if panel.images]
    assert len(densities) == 1
    left, right, bottom, top = densities[0].get_extent()
    values = densities[0].get_array()  # [rows, columns] on a grid that includes its edges
    cell = (right - left) / (values.shape[1] - 1) * (top - bottom) / (values.shape[0] - 1)
    assert abs(values.sum() * cell - 1) < 0.01
