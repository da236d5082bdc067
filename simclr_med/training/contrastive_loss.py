"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy, with negatives from every replica.

For a global batch of N positive pairs (z1_i, z2_i) of L2-normalised projections, the loss of pair i is
    l_i = CE(z1_i -> z2_i | {z2_k} U {z1_k, k != i}) + CE(z2_i -> z1_i | {z1_k} U {z2_k, k != i}),
and the batch loss is the mean of l_i over the N pairs (both directions summed, as SimCLR's code).

On several replicas each replica holds N / R pairs; its projections are all-gathered (the gather's
gradient flows back to the replica that produced them), so every replica sees all 2N - 2 negatives.
`per_pair_loss` returns l_i for the local pairs: dividing their sum by the global N gives per-replica
losses whose summed gradients equal the single-device gradient of the same global batch.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# Added to self-similarities so that exp() of them is zero (as SimCLR's LARGE_NUM).
_LARGE_NUM = 1e9


@dataclasses.dataclass
class ContrastiveResult:
    per_pair_loss: tf.Tensor  # [n_local]: l_i of each local pair
    logits: tf.Tensor  # [n_local, 2 * n_global]: view-1 anchors against all candidates
    labels: tf.Tensor  # [n_local]: column of each anchor's positive in `logits`


def _gather_from_replicas(tensor: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """All replicas' rows (replica order) and this replica's offset into them."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor, tf.constant(0, tf.int32)
    gathered = context.all_gather(tensor, axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return gathered, replica_id * tf.shape(tensor)[0]


def nt_xent(projection1: tf.Tensor, projection2: tf.Tensor, temperature: float) -> ContrastiveResult:
    """NT-Xent of the local pairs (`projection1[i]`, `projection2[i]`); call in a replica context."""
    z1 = tf.math.l2_normalize(tf.cast(projection1, tf.float32), axis=-1)
    z2 = tf.math.l2_normalize(tf.cast(projection2, tf.float32), axis=-1)
    z1_all, offset = _gather_from_replicas(z1)
    z2_all, _ = _gather_from_replicas(z2)
    n_local = tf.shape(z1)[0]
    n_global = tf.shape(z1_all)[0]
    positives = tf.range(n_local) + offset
    self_mask = tf.one_hot(positives, n_global) * _LARGE_NUM

    logits_11 = tf.matmul(z1, z1_all, transpose_b=True) / temperature - self_mask
    logits_22 = tf.matmul(z2, z2_all, transpose_b=True) / temperature - self_mask
    logits_12 = tf.matmul(z1, z2_all, transpose_b=True) / temperature
    logits_21 = tf.matmul(z2, z1_all, transpose_b=True) / temperature

    logits_1 = tf.concat([logits_12, logits_11], axis=1)
    logits_2 = tf.concat([logits_21, logits_22], axis=1)
    loss = (tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits_1)
            + tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits_2))
    return ContrastiveResult(per_pair_loss=loss, logits=logits_1, labels=positives)


def contrastive_accuracy(result: ContrastiveResult) -> tf.Tensor:
    """Per local pair: 1.0 when the view-1 anchor ranks its positive first."""
    predicted = tf.argmax(result.logits, axis=1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, result.labels), tf.float32)


def contrastive_entropy(result: ContrastiveResult) -> tf.Tensor:
    """Per local pair: entropy (nats) of the view-1 anchor's softmax over its candidates."""
    log_probs = tf.nn.log_softmax(result.logits, axis=1)
    return -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=1)
