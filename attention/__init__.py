"""Cross-attention control for Prompt-to-Prompt: token alignment between prompts and attention editing."""
