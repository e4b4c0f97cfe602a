import numpy as np

from aesampler.evaluation import data_copying

rng = np.random.default_rng(0)
centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])


def draw(n):
    """(n, 5) feature rows: four Gaussian clusters in two coordinates, noise in three."""
    centre = centres[rng.integers(0, len(centres), size=n)]
    return np.hstack([centre + rng.normal(size=(n, 2)), rng.normal(size=(n, 3))])


train, held_out = draw(400), draw(400)  # T and P_n: the same distribution
samples = {
    "copies": train[:200] + 1e-3 * rng.normal(size=(200, 5)),  # training points, barely moved
    "fresh": draw(200),  # new draws from the distribution
    "blurred": draw(200) + rng.normal(size=(200, 5)),  # off the data: underfitting
}
for name, rows in samples.items():
    result = data_copying(train, held_out, rows)  # k = min(20, 400 // 20, 200 // 40) = 5 cells
    print(
        f"{name}: C_T = {result.ct:.2f}, cells kept {len(result.kept)} of {result.cells}, "
        f"copying: {result.copying}"
    )
