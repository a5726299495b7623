// Train: LoRA backward pass, optimizer, datasets, checkpoints.
import Runtime
