"""Supervised fine-tuning: recipes, encoding, packing, the loop, lineage."""
