"""The serve stage: a finished run loaded for inference (`api`, `lorabudget.load`), scored (`evaluate`),
predicted into submissions (`predict`) and exported (`export`). Everything here reads run directories."""
