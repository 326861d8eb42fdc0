"""Everything that knows about ranks besides `engine.serve`: process groups, the control channel, sequence parallelism.

Model code stays single-rank: parallel pieces wrap the DiT at the split points it exposes and replace its
self-attention through the attention seam (`engine.models.attention.register_attention_backend`).
"""
