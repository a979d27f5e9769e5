"""Stage 2: SAM mask-decoder fusion model trained on cached image-text pairs."""
