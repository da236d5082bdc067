"""NT-Xent against a NumPy implementation, on one device and across 2 replicas."""

import numpy as np
import tensorflow as tf

from simclr_med.training import contrastive_loss


def numpy_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> np.ndarray:
    """Per-pair loss, written from the paper's definition (both directions summed)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    np.fill_diagonal(sim, -np.inf)
    log_prob = sim - np.log(np.exp(sim).sum(axis=1, keepdims=True))
    rows = np.arange(2 * n)
    positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    per_anchor = -log_prob[rows, positives]
    return per_anchor[:n] + per_anchor[n:]


def _projections(n=8, d=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, d).astype(np.float32), rng.randn(n, d).astype(np.float32)


def test_nt_xent_matches_numpy_on_one_device():
    z1, z2 = _projections()
    result = contrastive_loss.nt_xent(tf.constant(z1), tf.constant(z2), temperature=0.5)
    np.testing.assert_allclose(result.per_pair_loss.numpy(), numpy_nt_xent(z1, z2, 0.5),
                               rtol=1e-5, atol=1e-5)


def test_nt_xent_of_identical_views_is_small_and_accuracy_is_one():
    z1, _ = _projections()
    result = contrastive_loss.nt_xent(tf.constant(z1), tf.constant(z1 * 3.0), temperature=0.05)
    np.testing.assert_array_equal(contrastive_loss.contrastive_accuracy(result).numpy(), 1.0)
    assert float(tf.reduce_max(result.per_pair_loss)) < 1.0


def test_entropy_is_log_of_candidates_for_constant_logits():
    z = np.ones((4, 3), np.float32)
    result = contrastive_loss.nt_xent(tf.constant(z), tf.constant(z), temperature=1.0)
    # 2N - 1 candidates with equal logits (the self-similarity is masked out).
    np.testing.assert_allclose(contrastive_loss.contrastive_entropy(result).numpy(), np.log(7), rtol=1e-5)


def test_nt_xent_across_two_replicas_matches_numpy(two_cpu_strategy):
    z1, z2 = _projections(n=8)
    strategy = two_cpu_strategy
    assert strategy.num_replicas_in_sync == 2

    def halves(context):
        r = context.replica_id_in_sync_group
        return z1[4 * r:4 * (r + 1)], z2[4 * r:4 * (r + 1)]

    inputs = strategy.experimental_distribute_values_from_function(halves)

    @tf.function
    def run(values):
        return strategy.run(lambda v: contrastive_loss.nt_xent(v[0], v[1], 0.5).per_pair_loss,
                            args=(values,))

    per_replica = strategy.experimental_local_results(run(inputs))
    np.testing.assert_allclose(np.concatenate([t.numpy() for t in per_replica]),
                               numpy_nt_xent(z1, z2, 0.5), rtol=1e-5, atol=1e-5)
