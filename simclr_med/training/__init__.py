"""What trains a network, whatever the stage: the set-up every training stage shares (`stage`),
the loop (`loop`: distributed steps, checkpoints,
summaries), the losses (`contrastive_loss`: NT-Xent; `supervised_loss`: softmax and masked
sigmoid cross-entropy), LARS and the other optimizers (`lars`, `optimizers`), the learning-rate
schedule (`schedule`), the `tf.distribute` strategy (`strategy`) and running means of metrics
(`running_means`).

Imports models, data and checkpoints; never stages.
"""
