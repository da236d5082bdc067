"""The model-free parts of embedding maps: patient subset, projections, colours, case lines,
sprite and projector files."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from matplotlib import image as mpimg
from sklearn.manifold import TSNE
from tensorboard.plugins import projector

from simclr_med.errors import UserError
from simclr_med.evaluation import embedding_map


def _features(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 12)) * np.linspace(3, 0.1, 12)).astype(np.float32)


def test_pca_projection_is_numpys_principal_components():
    x = _features()
    xy = embedding_map.project(x, "pca", seed=0)
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:2].T
    for k in range(2):  # a component's sign is arbitrary
        sign = np.sign(xy[:, k] @ reference[:, k])
        np.testing.assert_allclose(xy[:, k], sign * reference[:, k], rtol=1e-5, atol=1e-6)


def test_tsne_is_scikit_learns_with_cosine_distances_and_repeats_for_a_seed():
    x = _features(40)
    xy = embedding_map.project(x, "tsne", seed=3)
    reference = TSNE(n_components=2, perplexity=13.0, metric="cosine", init="pca",
                     random_state=3).fit_transform(x.astype(np.float64))
    np.testing.assert_array_equal(xy, reference)
    np.testing.assert_array_equal(embedding_map.project(x, "tsne", seed=3), xy)
    with pytest.raises(UserError, match="at least 4 images"):
        embedding_map.project(x[:3], "pca", seed=0)


def test_auto_is_umap_only_where_umap_learn_is_installed():
    try:
        import umap  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    assert embedding_map.resolve_method("auto") == ("umap" if installed else "tsne")
    assert embedding_map.resolve_method("pca") == "pca"
    if not installed:
        with pytest.raises(UserError, match="umap-learn"):
            embedding_map.resolve_method("umap")


def test_patient_subset_keeps_whole_patients_within_the_cap_and_depends_on_the_seed():
    rng = np.random.default_rng(1)
    patient_id = np.repeat([f"p{i}" for i in range(80)], rng.integers(1, 6, 80))
    rng.shuffle(patient_id)
    keep = embedding_map.patient_subset(patient_id, 100, seed=0)
    assert 95 <= keep.sum() <= 100
    chosen = set(patient_id[keep])
    assert not chosen & set(patient_id[~keep])  # no patient split
    assert np.array_equal(keep, embedding_map.patient_subset(patient_id, 100, seed=0))
    assert not np.array_equal(keep, embedding_map.patient_subset(patient_id, 100, seed=1))
    assert embedding_map.patient_subset(patient_id, 0, seed=0).all()
    assert embedding_map.patient_subset(patient_id, len(patient_id), seed=0).all()


def test_case_lines_join_images_of_one_case_only():
    case_id = np.array(["a", "b", "a", "c", "d", "d", "b", "e", "d", "f"])
    lines = embedding_map.case_lines(case_id, seed=0, num_cases=10)
    assert [case_id[line].tolist() for line in lines] == [["a", "a"], ["b", "b"],
                                                          ["d", "d", "d"]]
    assert [line.tolist() for line in lines] == [[0, 2], [1, 6], [4, 5, 8]]
    two = embedding_map.case_lines(case_id, seed=0, num_cases=2)
    assert len(two) == 2 and all(len(set(case_id[line])) == 1 for line in two)
    assert embedding_map.case_lines(np.array(["a", "b"]), seed=0) == []


def test_colours_say_their_rule():
    mc = embedding_map.colouring("multiclass", ["x", "y"], {"class_id": np.array([1, -1, 0])})
    assert mc.group.tolist() == [1, 2, 0] and mc.names == ("x", "y", "unlabelled")
    labels = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 0], [0, 1]], np.float32)
    truth = {"labels": labels, "label_mask": mask}
    anything = embedding_map.colouring("multilabel", ["A", "B"], truth)
    assert anything.group.tolist() == [0, 1, 2, 0]
    assert anything.rule == "any of the 2 labels positive"
    one = embedding_map.colouring("multilabel", ["A", "B"], truth, label="B")
    assert one.group.tolist() == [1, 1, 2, 0] and one.names[0] == "B positive"
    with pytest.raises(UserError, match="not a label"):
        embedding_map.colouring("multilabel", ["A", "B"], truth, label="C")
    with pytest.raises(UserError, match="multi-class"):
        embedding_map.colouring("multiclass", ["x"], {"class_id": np.array([0])}, label="x")


def test_sprite_places_thumbnails_row_by_row_within_the_size_limit():
    thumbs = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    image = embedding_map.sprite(thumbs)
    assert image.shape == (6, 6, 3)
    assert np.array_equal(image[0:2, 2:4], thumbs[1]) and np.array_equal(image[2:4, 2:4],
                                                                          thumbs[4])
    assert not image[4:].any()
    assert embedding_map.thumbnail_size(2000) == 64
    assert embedding_map.thumbnail_size(40000) == 8192 // 200


def test_projector_files_hold_the_features_metadata_and_sprite(tmp_path):
    x = _features(7)
    thumbs = np.full((7, 16, 16, 3), 200, np.uint8)
    folder = tmp_path / "projector_test"
    meta = {"image_id": [f"i{k}" for k in range(7)], "label": ["a\tb"] + ["c"] * 6}
    embedding_map.write_projector(str(folder), x, meta, thumbs)
    embedding_map.write_projector(str(folder), x, meta, thumbs)  # a second run replaces
    config = text_format.Parse((folder / "projector_config.pbtxt").read_text(),
                               projector.ProjectorConfig())
    (entry,) = config.embeddings
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(folder)))
    np.testing.assert_array_equal(reader.get_tensor(entry.tensor_name), x)
    rows = (folder / entry.metadata_path).read_text().splitlines()
    assert rows[0] == "image_id\tlabel" and rows[1] == "i0\ta b" and len(rows) == 8
    sprite = mpimg.imread(str(folder / entry.sprite.image_path))
    assert sprite.shape[:2] == (3 * 16, 3 * 16) and list(entry.sprite.single_image_dim) == [16, 16]


def test_umap_where_installed_repeats_for_a_seed():
    umap = pytest.importorskip("umap")  # optional: pip install -e '.[umap]'
    x = _features(40)
    xy = embedding_map.project(x, "umap", seed=3)
    assert xy.shape == (40, 2) and xy.dtype == np.float64
    np.testing.assert_array_equal(embedding_map.project(x, "umap", seed=3), xy)
    reference = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine",
                          random_state=3).fit_transform(x.astype(np.float64))
    np.testing.assert_array_equal(xy, reference)
