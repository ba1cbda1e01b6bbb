"""The layer below every other vlfm package (it imports nothing of vlfm): mesh and sharding rules, pytree
helpers, checkpoint and metric I/O, FLOP counting."""
