"""Flows you can watch: NICE, RealNVP and spline couplings bend the plane.

Before the 784 dimensions of an image, the flows of nice.py, realnvp.py and spline.py on points in
the plane, where all that a flow does can be drawn. Four data sets are generated in code,
and each flow is trained by maximum likelihood on a fresh batch every step:

    minimise  -mean_i log p(x_i),    log p(x) = log N(f(x); 0, I) + log |det df/dx|

`python toy.py` prints each flow's mean log-likelihood on fresh test samples, beside a
single Gaussian's (the maximum-likelihood fit) and the true density's where it has a closed
form, and the learned density summed over a grid (1 for a density whose mass the grid
holds). It draws docs/toy.png: a row per data set with the data and, for each flow, its
density exp(logProbability), its samples x = f^-1(z), and the lines of a grid of the
latent plane carried into the data plane by f^-1; a last row follows one flow layer by layer.

Read a warped grid as the change of variables, p(x) = N(z; 0, I) / |det dx/dz|: where the
flow stretches a cell of the latent grid the density thins, where it squeezes one it piles up.
- NICE's couplings only shear, x + v(y): every cell keeps its area, and the final diagonal
  scaling changes all areas by one factor. Its density is the prior's, moved about: it can
  bend the Gaussian into a moon, not hollow out a ring or cut it into blobs or squares.
- RealNVP's affine couplings, exp(s(y)) x + t(y), stretch each cell by a factor of its own,
  so the density can be high in one place and near zero beside it.
- A spline coupling bends each coordinate h by a monotone curve g, and the density follows
  its slope, N(g(h)) dg/dh: a curve steep in two places and flat between turns one mode of
  the prior into two in a single layer.

Read after spline.py and before the data steps: it uses only the flows built so far.
"""
import io
import math
import time

import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image

from nice import NICE
from realnvp import RealNVP
from spline import NeuralSplineFlow

LIMIT = 5.0  # the grid and the pictures span [-LIMIT, LIMIT]^2, the splines act on [-LIMIT, LIMIT]
GRID_POINTS = 201  # per side: cells of 0.05 x 0.05
STEPS = 200
TEST_SAMPLES = 10_000
PICTURE_POINTS = 1500  # samples drawn in each panel

FLOWS = {  # the same size for each: 3 blocks of two couplings, nets 1 -> 64 -> 64 -> 1 (splines: -> 23)
    "NICE": lambda: NICE.build([2], blocks=3, hidden=64, depth=2),
    "RealNVP": lambda: RealNVP.build([2], blocks=3, hidden=64, depth=2),
    "spline": lambda: NeuralSplineFlow.build([2], blocks=3, hidden=64, depth=2, bins=8, bound=LIMIT),
}


def two_moons(n, generator):
    """Two interleaved half circles (scikit-learn's make_moons), scaled by 2, noise 0.2: [n, 2]."""
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle)) - 0.5
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle)) - 0.25
    return 2 * torch.stack([x, y], 1) + 0.2 * torch.randn(n, 2, generator=generator)


RING_RADII, RING_NOISE = (1.25, 3.0), 0.15


def rings(n, generator):
    """Two concentric rings, radii 1.25 and 3, radial noise 0.15, half the points on each: [n, 2]."""
    radius = torch.tensor(RING_RADII)[torch.randint(2, (n,), generator=generator)]
    radius = radius + RING_NOISE * torch.randn(n, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    return radius.unsqueeze(1) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)


def rings_log_density(x):
    """log sum_k 1/2 N(|x|; r_k, noise^2) / (2 pi |x|) (the chance of a negative radius is negligible)."""
    radius = x.norm(dim=1, keepdim=True)
    radial = torch.distributions.Normal(torch.tensor(RING_RADII), RING_NOISE).log_prob(radius)  # [n, 2]
    return torch.logsumexp(radial, 1) - math.log(2) - torch.log(2 * math.pi * radius.squeeze(1))


EIGHT_RADIUS, EIGHT_NOISE = 3.0, 0.3


def eight_centres():
    """The eight means, evenly spaced on the circle of radius EIGHT_RADIUS: [8, 2]."""
    angle = 2 * math.pi / 8 * torch.arange(8)
    return EIGHT_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], 1)


def eight_gaussians(n, generator):
    """Eight Gaussians, standard deviation 0.3, evenly spaced on a circle of radius 3: [n, 2]."""
    centres = eight_centres()[torch.randint(8, (n,), generator=generator)]
    return centres + EIGHT_NOISE * torch.randn(n, 2, generator=generator)


def eight_gaussians_log_density(x):
    """The even mixture of the 8 isotropic Gaussians above."""
    components = torch.distributions.Independent(torch.distributions.Normal(eight_centres(), EIGHT_NOISE), 1)
    mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(8)), components)
    return mixture.log_prob(x)


def checkerboard(n, generator):
    """Uniform on the 8 black squares (side 2) of a 4 x 4 board on [-4, 4]^2: [n, 2]."""
    column = torch.randint(4, (n,), generator=generator)
    row = 2 * torch.randint(2, (n,), generator=generator) + column % 2  # column + row even: black
    return 2 * (torch.stack([column, row], 1) + torch.rand(n, 2, generator=generator)) - 4


def checkerboard_log_density(x):
    """log(1/32) on a black square (8 squares of area 4), -inf elsewhere."""
    square = torch.floor((x + 4) / 2)
    black = (square.sum(1) % 2 == 0) & (x.abs() < 4).all(1)
    return torch.where(black, -math.log(32), -math.inf)


DATA_SETS = {  # each data set and its true log-density (None: no closed form)
    "two moons": (two_moons, None),
    "rings": (rings, rings_log_density),
    "eight Gaussians": (eight_gaussians, eight_gaussians_log_density),
    "checkerboard": (checkerboard, checkerboard_log_density),
}


def train(flow, data_set, steps=STEPS, batchSize=256, learning_rate=1e-2, seed=0):
    """Adam on -mean log p(x) of a fresh batch every step, the learning rate decaying to 0."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=learning_rate, fused=True)  # one kernel for all parameters
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = -flow.logProbability(data_set(batchSize, generator)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return flow


def gaussian_fit(x):
    """The maximum-likelihood Gaussian of samples x [n, 2]: their mean and (biased) covariance."""
    centred = x - x.mean(0)
    return torch.distributions.MultivariateNormal(x.mean(0), centred.T @ centred / len(x))


def grid(points=GRID_POINTS, limit=LIMIT):
    """A square grid on [-limit, limit]^2, row by row from the bottom: points [points^2, 2], a cell's area."""
    axis = torch.linspace(-limit, limit, points)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1), (axis[1] - axis[0]).item() ** 2


@torch.no_grad()
def layer_by_layer(flow, x, lines=13, limit=3.0, points=100):
    """The latent grid lines z1 = c and z2 = c (c in [-limit, limit]) and the points x [n, 2]
    where each is after k of the flow's L layers, for k = L (latent) down to 0 (data):
    a list of (grid lines [2 lines, points, 2], x_k [n, 2])."""
    values, along = torch.linspace(-limit, limit, lines), torch.linspace(-limit, limit, points)
    vertical = torch.stack([values.unsqueeze(1).expand(lines, points), along.expand(lines, points)], 2)
    grids = [torch.cat([vertical, vertical.flip(2)]).reshape(-1, 2)]  # z1 = c, then z2 = c
    for layer in reversed(flow.layers):  # z -> x: undo the last layer first
        grids.append(layer.inverse(grids[-1])[0])
    data = [x]
    for layer in flow.layers:  # x -> z
        data.append(layer(data[-1])[0])
    return [(lines_k.view(2 * lines, points, 2), x_k) for lines_k, x_k in zip(grids, reversed(data))]


@torch.no_grad()
def evaluate(flow, test):
    """What the table and the picture show of a trained flow, on test samples [n, 2]."""
    points, cell = grid()
    density = flow.logProbability(points).exp()  # [GRID_POINTS^2]
    samples = flow.sample(len(test))
    return {
        "flow": flow,
        "log-likelihood": flow.logProbability(test).mean().item(),
        "integral": (density.sum() * cell).item(),
        "outside": (samples.abs() > LIMIT).any(1).float().mean().item(),  # the mass the grid misses
        "density": density.view(GRID_POINTS, GRID_POINTS),
        "samples": samples[:PICTURE_POINTS],
        "stages": layer_by_layer(flow, test[:PICTURE_POINTS]),
    }


def run(data_sets=DATA_SETS, flows=FLOWS, steps=STEPS):
    """Train every flow on every data set; per data set, the test scores and each flow's evaluation."""
    results = {}
    for name, (data_set, true_log_density) in data_sets.items():
        test = data_set(TEST_SAMPLES, torch.Generator().manual_seed(1))
        gaussian = gaussian_fit(data_set(TEST_SAMPLES, torch.Generator().manual_seed(2)))
        results[name] = {
            "test": test[:PICTURE_POINTS],
            "Gaussian": gaussian.log_prob(test).mean().item(),
            "true": None if true_log_density is None else true_log_density(test).mean().item(),
            "flows": {flow_name: evaluate(train(build(), data_set, steps), test) for flow_name, build in flows.items()},
        }
    return results


def draw(results, path, follow=("rings", "spline")):
    """A row per data set: its test points, then each flow's density, samples and warped grid;
    a last row with the flow `follow` = (data set, flow) layer by layer. Returns the figure."""
    flow_names = list(next(iter(results.values()))["flows"])
    followed_data, followed_flow = follow
    stages = results[followed_data]["flows"][followed_flow]["stages"]
    columns = max(1 + 3 * len(flow_names), len(stages))
    figure = Figure(figsize=(1.45 * columns, 1.65 * (len(results) + 1)))
    panels = figure.subplots(len(results) + 1, columns, squeeze=False)
    for row, (name, result) in zip(panels, results.items()):
        scatter(row[0], result["test"], "k")
        row[0].set_title(name, fontsize=9, fontweight="bold")
        for index, (flow_name, flow) in enumerate(result["flows"].items()):
            density_panel, sample_panel, grid_panel = row[1 + 3 * index:4 + 3 * index]
            density_panel.imshow(flow["density"].numpy(), origin="lower", extent=(-LIMIT, LIMIT, -LIMIT, LIMIT),
                                 cmap="magma")
            density_panel.set_title(f"{flow_name}: {flow['log-likelihood']:.2f} nats", fontsize=8)
            scatter(sample_panel, flow["samples"], "C0")
            sample_panel.set_title(f"{flow_name} samples", fontsize=8)
            scatter(grid_panel, result["test"], "0.75")
            draw_grid(grid_panel, flow["stages"][-1][0])
            grid_panel.set_title(f"{flow_name}: latent grid", fontsize=8)
    last = len(stages) - 1  # stage k: after the first k of the flow's `last` layers
    for k, panel, (lines, points) in zip(range(last, -1, -1), panels[-1], stages):
        scatter(panel, points, "0.75")
        draw_grid(panel, lines)
        panel.set_title("latent z" if k == last else "data x" if k == 0 else f"after layer {k}", fontsize=8)
    for panel in panels.flat:
        panel.set(xlim=(-LIMIT, LIMIT), ylim=(-LIMIT, LIMIT), xticks=[], yticks=[], aspect="equal")
        if not panel.has_data():
            panel.set_axis_off()
    if len(stages) < columns:
        panels[-1][len(stages)].text(
            0, 0.5, f"Above, per flow: its density (title: mean test log-likelihood),\n"
            "its samples, and the latent grid (z1 = c blue, z2 = c orange)\ncarried to the data "
            "by the inverse: small cells, high density.\n"
            f"Left: {followed_flow} on {followed_data}, the grid one layer at a time;\ngrey: "
            "the test points after the first k layers.", fontsize=8, va="center",
            transform=panels[-1][len(stages)].transAxes, in_layout=False)
    figure.tight_layout(pad=0.3)
    save_with_a_palette(figure, path)
    return figure


def save_with_a_palette(figure, path, dpi=90):
    """A PNG of 256 colours: a third of the size of a full-colour one, and no visible change."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def scatter(panel, points, colour):
    panel.scatter(*points.T.numpy(), s=0.5, color=colour, linewidths=0)


def draw_grid(panel, lines):
    """Grid lines [2 n, points, 2]: the first n (z1 = c) in blue, the others (z2 = c) in orange."""
    colours = ["C0"] * (len(lines) // 2) + ["C1"] * (len(lines) // 2)
    panel.add_collection(LineCollection(lines.numpy(), colors=colours, linewidths=0.6))


def report(results):
    """The table of test log-likelihoods and grid integrals, as lines of text."""
    flow_names = list(next(iter(results.values()))["flows"])
    heading = "".join(f"{name:>9}" for name in ["Gaussian", *flow_names, "true"])
    lines = [f"mean log-likelihood of {TEST_SAMPLES} fresh test samples (nats, higher is better),",
             f"and each flow's density summed over the grid [-{LIMIT:g}, {LIMIT:g}]^2 (1 for a density)",
             f"{'':16}{heading}   integral" + "".join(f"{name:>9}" for name in flow_names)]
    for name, result in results.items():
        flows = result["flows"].values()
        scores = [result["Gaussian"], *(flow["log-likelihood"] for flow in flows), result["true"]]
        cells = "".join(f"{'-':>9}" if score is None else f"{score:9.3f}" for score in scores)
        lines.append(f"{name:16}{cells}           " + "".join(f"{flow['integral']:9.3f}" for flow in flows))
        for flow_name, flow in result["flows"].items():
            if flow["outside"] > 0.005:
                lines.append(f"{'':16}{flow_name}: {flow['outside']:.1%} of its samples fall outside the grid")
    return lines


if __name__ == "__main__":
    start = time.perf_counter()
    torch.manual_seed(0)
    results = run()
    draw(results, "docs/toy.png")
    print("\n".join(report(results)))
    print(f"trained {len(DATA_SETS) * len(FLOWS)} flows and drew docs/toy.png in {time.perf_counter() - start:.0f} s")
