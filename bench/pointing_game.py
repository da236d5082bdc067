"""The pointing game (Zhang et al., 2016) of an exported model's Grad-CAM maps on images with
region masks (e.g. lesion segmentations): the share of images whose heat-map peak lies inside the
mask, beside chance (the mean share of the image the masks cover: where a peak drawn uniformly at
random would land).

    .venv/bin/python bench/pointing_game.py --export_dir=DIR --data_dir=BUILD [--split=test] \\
        --manifest=metadata.csv [--image_id_column=image_id --mask_column=mask --mask_root=DIR] \\
        [--output=pointing_game.json] [--example_png=PATH [--example_image_id=ID]]

Uses only the export's `saliency` signature (heat maps of the predicted class). Each mask goes
through that signature's decoding too, so it gets exactly the centre crop and resize its image got
(bicubic, then thresholded at one half). Intervals: a bootstrap over patients, as evaluation's.
Also reported: the share of the map's mass inside the mask, beside the same chance, and the
centre baseline: the share of images whose mask holds the image's centre pixel (the hit rate of a
map that always peaks there; lesions tend to be photographed near the middle).
"""

from __future__ import annotations

import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flags import entry_point  # noqa: E402

entry_point.import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from flags import pointing_game_flags  # noqa: E402
from simclr_med.data.reader import open_build, read_images  # noqa: E402
from simclr_med.errors import UserError  # noqa: E402
from simclr_med.evaluation import metrics  # noqa: E402
from simclr_med.evaluation.saliency import write_saliency_png  # noqa: E402
from simclr_med.serving import ServedClassifier  # noqa: E402

MASK_THRESHOLD = 0.5
BOOTSTRAP_SEED = 0


def mask_paths(manifest: str, image_id_column: str, mask_column: str,
               mask_root: str) -> dict[str, str]:
    """image id -> mask file, for the manifest's rows that name one."""
    root = mask_root or os.path.dirname(os.path.abspath(manifest))
    with tf.io.gfile.GFile(manifest) as f:
        reader = csv.DictReader(f)
        missing = [c for c in (image_id_column, mask_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{manifest}: no column {', '.join(missing)} (columns: "
                            f"{', '.join(reader.fieldnames or [])})")
        return {row[image_id_column]: os.path.join(root, row[mask_column])
                for row in reader if row[mask_column]}


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum (its first, in row-major order) lies in the mask; a map without
    any positive value has no peak and misses."""
    if not heatmap.max() > 0:
        return False
    return bool(mask.flat[int(np.argmax(heatmap))])


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else 0.0


def with_interval(values: np.ndarray, weights: np.ndarray) -> dict:
    """The mean of per-image `values` and its 95% interval over the weightings [B, N]."""
    interval, _ = metrics.percentile_interval(weights @ values / weights.sum(axis=1))
    return {"value": float(values.mean()), "ci95": interval}


def score(classifier: ServedClassifier, dataset: tf.data.Dataset,
          masks: dict[str, str]) -> dict[str, np.ndarray]:
    """Per scored image: id, patient, class id (-1 without), predicted class, hit, mass, mask
    share; counts of the images skipped."""
    rows = {key: [] for key in ("image_id", "patient_id", "class_id", "predicted", "hit", "mass",
                                "share", "centre")}
    skipped = {"no_mask": 0, "mask_outside_crop": 0}
    for element in dataset.as_numpy_iterator():
        image_id = element["image_id"].decode()
        if image_id not in masks:
            skipped["no_mask"] += 1
            continue
        with tf.io.gfile.GFile(masks[image_id], "rb") as f:
            mask = classifier.saliency(f.read()).image[..., 0] > MASK_THRESHOLD
        if not mask.any():
            skipped["mask_outside_crop"] += 1
            continue
        result = classifier.saliency(element["encoded"])
        for key, value in (("image_id", image_id), ("patient_id", element["patient_id"].decode()),
                           ("class_id", int(element.get("class_id", -1))),
                           ("predicted", result.class_index),
                           ("hit", peak_inside(result.heatmap, mask)),
                           ("mass", mass_inside(result.heatmap, mask)), ("share", mask.mean()),
                           ("centre", mask[(mask.shape[0] - 1) // 2, (mask.shape[1] - 1) // 2])):
            rows[key].append(value)
    return {**{key: np.array(values) for key, values in rows.items()}, "skipped": skipped}


def summarise(scored: dict, names: list[str], samples: int) -> dict:
    if not len(scored["image_id"]):
        raise UserError("no image of the split has a mask in the manifest: check "
                        "--image_id_column (the build's image ids) and --mask_column")
    index, num_patients = metrics.patient_index(scored["patient_id"])
    weights = metrics.resample_weights(index, num_patients, np.random.default_rng(BOOTSTRAP_SEED),
                                       samples)
    hit, mass, share, centre = (scored[k].astype(np.float64)
                                for k in ("hit", "mass", "share", "centre"))
    result = {"images": len(hit), "patients": num_patients, "skipped": scored["skipped"],
              "pointing_game": with_interval(hit, weights),
              "chance": with_interval(share, weights),
              "centre_baseline": with_interval(centre, weights),
              "mass_inside_mask": with_interval(mass, weights),
              "zero_maps": int(np.sum(~scored["hit"] & (scored["mass"] == 0)))}
    labelled = scored["class_id"] >= 0
    if labelled.any():
        result["top1_accuracy"] = float(np.mean(
            scored["predicted"][labelled] == scored["class_id"][labelled]))
        result["per_class"] = {
            name: {"images": int(np.sum(chosen)), "pointing_game": float(hit[chosen].mean()),
                   "chance": float(share[chosen].mean())}
            for j, name in enumerate(names)
            if (chosen := scored["class_id"] == j).any()}
    return result


def write_example(classifier: ServedClassifier, dataset: tf.data.Dataset, masks: dict[str, str],
                  image_id: str, path: str) -> str:
    """Draws `image_id` (default: the first image with a mask) with its map and mask outline."""
    for element in dataset.as_numpy_iterator():
        chosen = element["image_id"].decode()
        if (image_id and chosen == image_id) or (not image_id and chosen in masks):
            break
    else:
        raise UserError(f"--example_image_id={image_id!r} is not an image of the split")
    if chosen not in masks:
        raise UserError(f"--example_image_id={image_id!r} has no mask in the manifest")
    with tf.io.gfile.GFile(masks[chosen], "rb") as f:
        mask = classifier.saliency(f.read()).image[..., 0] > MASK_THRESHOLD
    result = classifier.saliency(element["encoded"])
    where = "inside" if peak_inside(result.heatmap, mask) else "outside"
    write_saliency_png(path, result.image, result.heatmap,
                       f"{chosen}: {classifier.class_names[result.class_index]} "
                       f"p = {result.probability:.1%}; peak {where} the mask (white)",
                       outline=mask)
    return chosen


def main() -> None:
    options = pointing_game_flags.options()
    command = " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    print(f"command: {command}")
    classifier = ServedClassifier(pointing_game_flags.export_dir())
    source = open_build(options["data_dir"])
    masks = mask_paths(options["manifest"], options["image_id_column"], options["mask_column"],
                       options["mask_root"])
    dataset = read_images(source, options["split"])
    result = {"command": command, "export": classifier.path, "split": options["split"],
              **summarise(score(classifier, dataset, masks), classifier.class_names,
                          options["bootstrap_samples"])}
    if options["example_png"]:
        result["example"] = {"png": options["example_png"], "image_id": write_example(
            classifier, dataset, masks, options["example_image_id"], options["example_png"])}
    with tf.io.gfile.GFile(options["output"], "w") as f:
        json.dump(result, f, indent=2)
    game, chance = result["pointing_game"], result["chance"]
    print(f"pointing game on {result['images']} {options['split']} images "
          f"({result['patients']} patients): {game['value']:.3f} "
          f"(95% CI {game['ci95'][0]:.3f}-{game['ci95'][1]:.3f}); chance {chance['value']:.3f}, "
          f"centre baseline {result['centre_baseline']['value']:.3f}; map mass inside the mask {result['mass_inside_mask']['value']:.3f}")
    print(f"wrote {options['output']}")


if __name__ == "__main__":
    entry_point.run(main)
