"""The runtime stage: device and precision, token ids and batches, the frozen-prefix cache, fast dropout, the one
forward pass and batched inference. What training and serving both run on."""
