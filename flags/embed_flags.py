"""Flags of `run.py --mode=embed` (embedding maps) and their conversion into an `EmbedConfig`.
The split, seed, batch size and checkpoint are the flags evaluation uses (`--eval_split`,
`--seed`, `--eval_batch_size`, `--eval_checkpoint`); defaults and choices come from
`simclr_med.config`.
"""

from __future__ import annotations

from absl import flags

from flags import finetune_flags  # noqa: F401  (defines --eval_batch_size, --eval_checkpoint)
from flags.entry_point import ConfigFlags
from simclr_med.config import EMBED_METHODS, EmbedConfig

EMBED = ConfigFlags(EmbedConfig, flag_names={
    "method": "embed_method", "max_images": "embed_max_images", "label": "embed_label",
    "batch_size": "eval_batch_size", "checkpoint": "eval_checkpoint"})

flags.DEFINE_enum("embed_method", EmbedConfig.method, list(EMBED_METHODS), "2-D projection of "
                  "the embedding map: auto (UMAP if umap-learn is installed, else t-SNE), umap, "
                  "tsne, or pca (quick, linear).")
flags.DEFINE_integer("embed_max_images", EmbedConfig.max_images, "Images on the embedding map "
                     "at most: whole patients drawn with --seed (0 = every image of the split).")
flags.DEFINE_string("embed_label", EmbedConfig.label, "Multi-label data: colour the map by this "
                    "label; '' = any label positive vs none.")
flags.DEFINE_string("output_dir", EmbedConfig.output_dir, "--mode=embed: folder of the "
                    "embedding files ('' = --model_dir).")


def embed_config() -> EmbedConfig:
    return EMBED.build()
