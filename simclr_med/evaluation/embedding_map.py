"""Embedding maps: what an encoder's features look like, for a person to see.

The parts that need no model: the patient subset a map is drawn from, the 2-D projection of the
features (UMAP, t-SNE or PCA), the colour of each point (its class, or for multi-label data a rule
on its labels), the lines joining the images of a few multi-image cases, the map as a PNG, and the
TensorBoard projector files (`tensorboard --logdir <folder>`, Projector tab) with a sprite of
thumbnails. `simclr_med.stages.embed` runs the model and calls these.

Projections: PCA on the centred features (linear, quick); t-SNE (scikit-learn) and UMAP
(umap-learn) on cosine distances, the geometry the contrastive loss and the k-NN of linear
evaluation use. All are deterministic for a fixed seed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from simclr_med.data import schema
from simclr_med.errors import UserError

METHOD_TITLES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
MIN_IMAGES = 4  # fewer points make no map (t-SNE needs perplexity < images)
CASES_JOINED = 10  # multi-image cases whose images the map joins by lines
SPRITE_MAX_SIDE = 8192  # pixels, the projector's limit for a sprite image
THUMBNAIL_MAX = 64  # pixels per thumbnail side; smaller when many images must fit
UNKNOWN_COLOUR = "lightgrey"


def patient_subset(patient_id: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """[N] bool: the images of whole patients, drawn in an order from `seed`, as many as fit in
    `max_images` (0: every image). A patient with more images than the room left is passed over,
    so the subset is as large as the cap allows without splitting a patient's cases."""
    if not max_images or len(patient_id) <= max_images:
        return np.ones(len(patient_id), bool)
    patients, inverse, counts = np.unique(patient_id, return_inverse=True, return_counts=True)
    chosen = np.zeros(len(patients), bool)
    room = max_images
    for index in np.random.default_rng(seed).permutation(len(patients)):
        if counts[index] <= room:
            chosen[index] = True
            room -= counts[index]
    return chosen[inverse]


def resolve_method(method: str) -> str:
    """`auto`: UMAP where umap-learn is installed, else t-SNE. UMAP asked for and missing is the
    user's error."""
    has_umap = importlib.util.find_spec("umap") is not None
    if method == "auto":
        return "umap" if has_umap else "tsne"
    if method == "umap" and not has_umap:
        raise UserError("--embed_method=umap needs the umap-learn package (pip install "
                        "umap-learn); --embed_method=tsne or pca need nothing more")
    return method


def project(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """[N, 2] float64 coordinates of the features by `method` (umap, tsne or pca)."""
    n = len(features)
    if n < MIN_IMAGES:
        raise UserError(f"an embedding map needs at least {MIN_IMAGES} images, got {n}")
    x = features.astype(np.float64)
    if method == "pca":
        return PCA(n_components=2, svd_solver="full").fit_transform(x)
    if method == "tsne":
        return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), metric="cosine",
                    init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine",
                         random_state=seed).fit_transform(x).astype(np.float64)
    raise ValueError(f"unknown projection {method!r}")


@dataclasses.dataclass(frozen=True)
class Colouring:
    """Which group each point is drawn in, the groups' names and the rule that made them."""

    group: np.ndarray  # [N] index into names
    names: tuple[str, ...]
    rule: str  # the legend's title
    unknown: tuple[int, ...] = ()  # groups drawn grey (unlabelled, masked)


def colouring(task: str, names: Sequence[str], truth: dict[str, np.ndarray],
              label: str = "") -> Colouring:
    """Multi-class: by class, unlabelled images apart. Multi-label: `label` positive / negative /
    masked, or with no `label` any label positive vs every label known and 0 ("no finding")."""
    if task == schema.MULTICLASS:
        if label:
            raise UserError(f"--embed_label={label} is for multi-label data; this data set is "
                            "multi-class and the map is coloured by class")
        class_id = truth["class_id"]
        group = np.where(class_id >= 0, class_id, len(names))
        return Colouring(group, (*names, "unlabelled"), "class", (len(names),))
    labels, known = truth["labels"] > 0.5, truth["label_mask"] > 0
    if label:
        if label not in names:
            raise UserError(f"--embed_label={label} is not a label of the data set "
                            f"({', '.join(names)})")
        j = list(names).index(label)
        group = np.where(~known[:, j], 2, np.where(labels[:, j], 0, 1))
        return Colouring(group, (f"{label} positive", f"{label} negative", f"{label} masked"),
                         f"label {label}", (2,))
    positive = (labels & known).any(axis=1)
    group = np.where(positive, 0, np.where(known.all(axis=1), 1, 2))
    return Colouring(group, ("any label positive", "no finding (every label known, all 0)",
                             "none positive, some masked"),
                     f"any of the {len(names)} labels positive", (2,))


def case_lines(case_id: np.ndarray, seed: int, num_cases: int = CASES_JOINED) -> list[np.ndarray]:
    """Indices of the images of up to `num_cases` cases with >= 2 images, drawn with `seed`,
    each in reading order."""
    cases, counts = np.unique(case_id, return_counts=True)
    several = cases[counts >= 2]
    if not len(several):
        return []
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(len(several), min(num_cases, len(several)), replace=False))
    return [np.flatnonzero(case_id == several[i]) for i in drawn]


def map_figure(xy: np.ndarray, colours: Colouring, lines: Sequence[np.ndarray], method: str,
               title: str) -> Figure:
    """The 2-D map: one point per image coloured by its group; the images of each chosen case
    circled and joined by lines to the case's centre."""
    figure = Figure(figsize=(8.5, 6.5))
    axes = figure.subplots()
    palette = colormaps["tab10" if len(colours.names) <= 10 else "tab20"]
    for index, name in enumerate(colours.names):
        members = colours.group == index
        if not members.any():
            continue
        colour = UNKNOWN_COLOUR if index in colours.unknown else palette(index % palette.N)
        axes.scatter(xy[members, 0], xy[members, 1], s=9, color=colour, alpha=0.75,
                     linewidths=0, label=f"{name} ({int(members.sum())})")
    for members in lines:  # a star from the case's centre: readable for cases of any size
        centre = xy[members].mean(axis=0)
        for point in xy[members]:
            axes.plot([centre[0], point[0]], [centre[1], point[1]], color="black",
                      linewidth=0.8, alpha=0.8)
        axes.scatter(xy[members, 0], xy[members, 1], s=22, facecolors="none",
                     edgecolors="black", linewidths=0.8)
    handles, labels = axes.get_legend_handles_labels()
    if lines:
        handles.append(Line2D([], [], color="black", linewidth=0.8, marker="o", markersize=4.5,
                              markerfacecolor="none"))
        labels.append(f"images of one case ({len(lines)} cases with >= 2 images)")
    axes.legend(handles, labels, title=f"colour: {colours.rule}", loc="upper left",
                bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8, frameon=False)
    name = METHOD_TITLES[method]
    axes.set(xlabel=f"{name} 1", ylabel=f"{name} 2", xticks=[], yticks=[],
             title=f"{name} of final_avg_pool features, {len(xy)} images\n{title}")
    return figure


def save_figure(figure: Figure, path: str) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110, bbox_inches="tight")


def thumbnail_size(num_images: int) -> int:
    """Thumbnail side so that a square grid of `num_images` fits in the sprite's limit."""
    side = THUMBNAIL_MAX if num_images <= 1 else min(
        THUMBNAIL_MAX, SPRITE_MAX_SIDE // math.ceil(math.sqrt(num_images)))
    if side < 1:
        raise UserError(f"{num_images} images do not fit in a {SPRITE_MAX_SIDE}-pixel sprite: "
                        "lower --embed_max_images")
    return side


def sprite(thumbnails: np.ndarray) -> np.ndarray:
    """[side * t, side * t, 3] uint8: the [N, t, t, 3] thumbnails row by row, side =
    ceil(sqrt(N)), the rest black (the projector's sprite layout)."""
    n, t = thumbnails.shape[:2]
    side = math.ceil(math.sqrt(n))
    grid = np.zeros((side * side, t, t, 3), np.uint8)
    grid[:n] = thumbnails
    return grid.reshape(side, side, t, t, 3).transpose(0, 2, 1, 3, 4).reshape(side * t,
                                                                              side * t, 3)


PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # the variable's checkpoint key


def _tsv_field(value: str) -> str:
    return " ".join(str(value).split())  # no tab or newline inside a field


def write_projector(directory: str, features: np.ndarray, metadata: dict[str, Sequence[str]],
                    thumbnails: np.ndarray) -> None:
    """TensorBoard projector files in `directory` (replaced if present): a checkpoint of the
    features, `metadata.tsv` (a header, then a row per image), `sprite.png` and
    `projector_config.pbtxt`."""
    from tensorboard.plugins import projector

    if tf.io.gfile.exists(directory):
        tf.io.gfile.rmtree(directory)
    tf.io.gfile.makedirs(directory)
    tf.train.Checkpoint(embedding=tf.Variable(features)).save(
        os.path.join(directory, "embedding.ckpt"))
    columns = list(metadata)
    with tf.io.gfile.GFile(os.path.join(directory, "metadata.tsv"), "w") as f:
        f.write("\t".join(columns) + "\n")
        for row in zip(*(metadata[c] for c in columns)):
            f.write("\t".join(_tsv_field(v) for v in row) + "\n")
    with tf.io.gfile.GFile(os.path.join(directory, "sprite.png"), "wb") as f:
        f.write(tf.io.encode_png(sprite(thumbnails)).numpy())
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = PROJECTOR_TENSOR
    embedding.metadata_path = "metadata.tsv"
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend(list(thumbnails.shape[2:0:-1]))
    projector.visualize_embeddings(directory, config)
