"""The train stage: the recipe (setup -> train -> finish), its optimizer and schedule, validation during
training, checkpoints, and what a finished run writes."""
