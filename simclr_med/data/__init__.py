"""Images in, tensors out: the case record (`schema`, the one definition of the on-disk format,
with the file names of a build), shard checks (`integrity`), readers of builds and TFDS
(`reader`), decoding and cropping (`preprocess`), augmentation (`augment`), MICLe pairs
(`micle`) and each stage's input pipeline (`pretrain_input`, `finetune_input`).

Bottom layer: imports only `simclr_med.config` and `simclr_med.errors`. `data_prep` writes what
`schema` defines; of the library it imports only `schema`, `integrity` and `simclr_med.errors`.
"""
