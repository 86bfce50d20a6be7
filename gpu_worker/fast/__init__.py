"""The direct fast path: batched features, encoder and decoding on the worker's device.

`features` computes FunASR's WavFrontend features for a whole padded batch at once;
`sensevoice` and `paraformer` run each family's network with correct masks; `runner` ties
them to the batcher as the `direct` engine's runner.
"""
