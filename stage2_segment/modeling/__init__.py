"""Stage-2 model parts, one module per concept (after segment-anything's layout): the frozen image encoder,
the text-prompt projector, the batched SAM mask decoder, and the checkpoint that initialises them."""
