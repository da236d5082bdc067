"""The networks: the width-multiplied ResNet family (`resnet`), the projection head
(`projection_head`) and the SimCLR model that joins them with a supervised head (`simclr`).

Bottom layer: imports only `simclr_med.config` and `simclr_med.errors`, never data, training or
stage code, so a network can be built in a notebook without any of them.
"""
