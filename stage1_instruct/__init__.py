"""Stage 1: frozen vision-language model + LLM write a text instruction per slice, modality and target."""
